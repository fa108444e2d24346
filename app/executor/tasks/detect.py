"""A judge detector over a run's completions: one batch of yes/no questions per unit, the answers
sent back as one `detections` event."""

from __future__ import annotations

import math
from collections.abc import Callable

from app.executor.job import Job, Units
from app.executor.protocol import Detections
from engine.discovery.detectors import judge_steps
from engine.discovery.embedder import Embedder
from engine.errors import EngineError
from engine.models import LoadedModel


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
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
            job.emit(Detections(*job.ids, rows=scores))
            return False
        job.clock.tick(phase="judging")
        units += 1
        eta = job.clock.eta(math.ceil((total - done) * units / done))
        job.progress(done / total, f"judged {done}/{total} completions{job.clock.left(eta)}", phase="judging")
        yield
