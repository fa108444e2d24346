"""Scoring in the worker: a run's findings (scores, behaviours, ranking) and a judge detector's
answers, each as units of the compute loop (an embedding chunk, a fluency batch, or a batch of
yes/no questions), sent back as one event when done."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.discovery.detectors import judge_steps
from engine.discovery.embedder import Embedder
from engine.discovery.findings import payload_steps
from engine.errors import EngineError
from engine.models import LoadedModel

if TYPE_CHECKING:
    from app.executor.tasks import Job, Units


def score(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
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
            job.event("findings", found=end.value)
            return False
        job.clock.tick()
        eta = job.clock.eta(total - done)
        job.progress(
            done / total,
            f"scoring {len(rows)} completions: {done}/{total}{job.clock.left(eta)}",
            phase="scoring",
            eta_s=eta,
        )
        yield


def judge(lm: LoadedModel, job: Job) -> Units:
    """A judge detector over a run's completions: one batch of yes/no questions per unit."""
    rows = job.order.spec.get("rows") or []
    if not rows:
        raise EngineError("the run has no steered completions to judge")
    steps = judge_steps(lm, str(job.order.spec["question"]), [str(text) for _, text in rows])
    units = 0
    while True:
        if job.cancelled:
            return True
        try:
            done, total = next(steps)
        except StopIteration as end:
            scores = [{"generation_id": gid, "score": p} for (gid, _), p in zip(rows, end.value, strict=True)]
            job.event("detections", rows=scores)
            return False
        job.clock.tick()
        units += 1
        eta = job.clock.eta(math.ceil((total - done) * units / done))
        job.progress(done / total, f"judged {done}/{total} completions{job.clock.left(eta)}", phase="judging")
        yield
