"""Generalizing a vector: trained further on more prompts, compared before and after on held-out ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.executor.job import Job, Units
from app.executor.retrained import Found, earlier, parent, refine, rows
from engine.discovery.embedder import Embedder
from engine.models import LoadedModel
from engine.refine.generalize import generalize_steps
from engine.refine.specs import GeneralizeSpec

PHASES = {"training": (0.0, 0.5), "completions": (0.5, 0.8), "scoring": (0.8, 1.0)}  # of its bar


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    spec = GeneralizeSpec.from_dict(job.order.spec)
    batch = int(job.order.gallery.get("batch", 16))

    def where(unit: tuple[Any, ...]) -> tuple[float, str]:
        phase, done, total = unit
        low, high = PHASES[phase]
        return low + (high - low) * done / max(total, 1), f"{phase} {done}/{total}"

    def finish(found: Any) -> Found:
        record = found.record.to_dict()
        record.pop("index")
        records = [{**record, "cos_parent": found.cos_parent}]
        return Found(
            rows(lm, spec.prompts, found.source, found.vector[None], records),
            {"generalize": found.to_dict()},
            target=found.target,
            radius=found.radius,
        )

    def steps() -> Any:
        return generalize_steps(
            lm, embedder(), parent(job), spec, orthogonal_to=earlier(job), batch_size=batch
        )

    return (yield from refine(job, "training on more prompts", steps, where, finish))
