"""An R-path: the vector trained again, warm-started, at each multiple of its norm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.executor.job import Job, Units
from app.executor.retrained import Found, earlier, parent, refine, rows
from engine.discovery.embedder import Embedder
from engine.models import LoadedModel
from engine.refine.rpath import rpath_steps
from engine.refine.specs import RPathSpec


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    spec = RPathSpec.from_dict(job.order.spec)
    multiples = sorted(job.order.spec["multiples"])

    def where(unit: tuple[Any, ...]) -> tuple[float, str]:
        done, total, step = unit
        return done / total, f"R × {multiples[done]:g} ({done + 1} of {total}), step {step}"

    def finish(found: Any) -> Found:
        records = [
            {**p.to_dict(), "curve": curve} for p, curve in zip(found.points, found.curves, strict=True)
        ]
        return Found(
            rows(lm, spec.prompts, found.source, found.vectors, records),
            {"rpath": found.to_dict()},
            target=found.target,
            radius=found.radius,
        )

    steps = lambda: rpath_steps(lm, parent(job), spec, orthogonal_to=earlier(job))  # noqa: E731
    return (yield from refine(job, "R-path", steps, where, finish))
