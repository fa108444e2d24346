"""A concept (engine/methods/concepts.py): one batch of prompts per unit, then its one vector, sent
with what it was trained on (threshold, norms, training scores) as the run's result."""

from __future__ import annotations

from collections.abc import Callable

from app.executor.codec import to_bytes
from app.executor.job import Job, Units
from app.executor.protocol import Vectors
from engine.discovery.embedder import Embedder
from engine.methods.concepts import ConceptSpec, concept_steps
from engine.models import LoadedModel


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    if job.order.done:  # stored by an earlier attempt: nothing is left to do
        return False
    # The run's `prompts` (the without set, where its gallery shows what it does) are the app's.
    spec = ConceptSpec.from_dict({k: v for k, v in job.order.spec.items() if k != "prompts"})
    steps = concept_steps(lm, spec)
    job.progress(0.0, "reading the prompts", force=True)
    yield
    while True:
        if job.cancelled:
            return True
        try:
            _, done, total = next(steps)
        except StopIteration as end:
            concept = end.value
            row = {
                "index": 0,
                "block": concept.block,
                "values": to_bytes(concept.vector),
                "norm": float(concept.vector.norm()),
                "metrics": {"threshold": concept.threshold, "auc": concept.to_dict()["auc"]},
            }
            job.emit(
                Vectors(
                    *job.ids,
                    rows=[row],
                    source=concept.block,
                    result={"concept": concept.to_dict()},
                )
            )
            return False
        job.progress(done / max(total, 1), f"prompts read {done}/{total}")
        yield
