"""Scoring a run: its gallery completions and its random twin's scored (an embedding chunk or a
fluency batch per unit), then clustered and ranked; sent back as one `findings` event."""

from __future__ import annotations

from collections.abc import Callable

from app.executor.job import Job, Units
from app.executor.protocol import Findings
from engine.discovery.embedder import Embedder
from engine.discovery.findings import payload_steps
from engine.errors import EngineError
from engine.models import LoadedModel


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    """A run's findings: its gallery completions and its random twin's scored (an embedding chunk or
    a fluency batch per unit), then clustered and ranked; sent as one `findings` event."""
    rows = job.order.spec.get("rows") or []
    if not rows:
        raise EngineError("the run has no greedy gallery samples to score")
    job.progress(0.0, f"scoring {len(rows)} completions: loading the embedding model", force=True)
    yield
    steps = payload_steps(lm, embedder(), rows)
    while True:
        if job.cancelled:
            return True
        try:
            done, total = next(steps)
        except StopIteration as end:
            job.emit(Findings(*job.ids, found=end.value))
            return False
        job.clock.tick(phase="scoring")
        eta = job.clock.eta(total - done)
        job.progress(
            done / total,
            f"scoring {len(rows)} completions: {done}/{total}{job.clock.left(eta)}",
            phase="scoring",
            eta_s=eta,
        )
        yield
