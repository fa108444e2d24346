"""Scoring a run: its gallery completions and its random twin's scored (an embedding chunk or a
fluency batch per unit), then clustered and ranked; sent back as one `findings` event."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from app.executor.job import Job, Units
from app.executor.protocol import Findings
from engine.discovery.embedder import Embedder
from engine.discovery.findings import payload_steps
from engine.discovery.traits import Traits, traits
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
            job.emit(Findings(*job.ids, found=with_directions(end.value, rows)))
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


# Whether a completion holds each typed trait (engine/discovery/traits.py's names); "short" is said
# of the steered completion only (it stopped well before its unsteered partner did).
HOLDS: dict[str, Callable[[Traits], bool]] = {
    "refusal": lambda t: t.refusal,
    "identity": lambda t: t.identity,
    "disclaimer": lambda t: t.disclaimer,
    "list": lambda t: t.list_level == 2,
    "code": lambda t: t.code,
    "language": lambda t: t.foreign,
    "instructions": lambda t: t.instructs,
    "number": lambda t: t.leads_with_number,
    "short": lambda t: True,
}


def with_directions(found: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The scores' typed changes with their direction: {"trait": "refusal", "now": True} when the
    steered completion gained the trait, False when it lost it (the scores come in the rows' order)."""
    for score, row in zip(found["scores"], rows, strict=True):
        mine = traits(row["text"])
        score["changes"] = [
            {"trait": name, "now": bool(HOLDS[name](mine)) if name in HOLDS else True}
            for name in score.get("changes", [])
        ]
    return found
