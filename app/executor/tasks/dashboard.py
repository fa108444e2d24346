"""A vector's dashboard (engine/discovery/dashboard.py): its model's corpus at the vector's block and
at its run's downstream block, built where missing and cached on disk under the worker's data dir
with its answers' embeddings, the run's prompts answered steered (an answering or steered decode
step, a residual batch or an embedding chunk per unit), then the payload, sent back as the run's
result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.executor.codec import from_bytes
from app.executor.job import Job, Units
from app.executor.protocol import Result
from engine.discovery.dashboard import DashboardSpec, DashboardSteps, dashboard_steps
from engine.discovery.embedder import Embedder
from engine.models import LoadedModel

WORDS = {
    "answering": "answering the corpus",
    "residuals": "storing residuals",
    "downstream": "storing residuals at the run's target block",
    "embedding": "embedding the corpus's answers",
    "steered": "answering the run's prompts steered",
    "dashboard": "reading",
}
PHASES = {
    "answering": (0.0, 0.7),
    "residuals": (0.7, 0.8),
    "downstream": (0.8, 0.88),
    "embedding": (0.88, 0.93),
    "steered": (0.93, 0.97),
    "dashboard": (0.97, 1.0),
}


def _steps(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> DashboardSteps:
    order: dict[str, Any] = dict(job.order.spec)
    bank = int(order.pop("bank_prompts", 0))  # the server's share of the bank (its settings)
    order.pop("model", None)
    spec = DashboardSpec.from_dict({**order, "bank": bank > 0})
    assert job.order.theta0 is not None, "a dashboard's order carries its vector"
    vector = from_bytes(job.order.theta0)
    shared = bank if bank > 0 else False
    return (
        yield from dashboard_steps(lm, Path(job.data), spec, vector=vector, bank=shared, embedder=embedder())
    )


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    steps = _steps(lm, job, embedder)
    job.progress(0.0, "reading the vector", force=True)
    yield
    while True:
        if job.cancelled:
            return True  # the corpus keeps what it finished (whole files only); the payload is not sent
        try:
            phase, done, total = next(steps)
        except StopIteration as end:
            job.emit(Result(*job.ids, result={"dashboard": end.value}))
            return False
        job.clock.tick()
        low, high = PHASES.get(phase, (0.0, 1.0))
        job.progress(low + (high - low) * done / max(total, 1), f"{WORDS.get(phase, phase)} {done}/{total}")
        yield
