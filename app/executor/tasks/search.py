"""A search around a vector for completions a detector scores higher (an evolution strategy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from app.executor.job import Job, Units
from app.executor.retrained import Found, parent, refine, rows
from engine.discovery.embedder import Embedder
from engine.models import LoadedModel
from engine.refine.search import search_steps
from engine.refine.specs import SearchSpec


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    spec = SearchSpec.from_dict(job.order.spec)
    batch = int(job.order.gallery.get("batch", 16))

    def where(unit: tuple[Any, ...]) -> tuple[float, str]:
        phase, generation, tried = unit
        return (
            tried / spec.budget,
            f"generation {generation}: {phase}, {tried}/{spec.budget} candidates tried",
        )

    def finish(found: Any) -> Found:
        best = found.best
        records = [
            {
                "score": c.score,
                "generation": c.generation,
                "cos_start": c.cos_start,
                "detector_scores": c.scores,
            }
            for c in best
        ]
        vectors = torch.stack([c.vector for c in best])
        return Found(rows(lm, spec.prompts, spec.block, vectors, records), {"search": found.to_dict()})

    steps = lambda: search_steps(lm, parent(job), spec, batch_size=batch)  # noqa: E731
    return (yield from refine(job, "search", steps, where, finish))
