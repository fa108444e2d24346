"""A generation job: each given vector at each scale on each prompt, plus the unsteered ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.executor.codec import adapter_from
from app.executor.gallery import decode_rows, request, steered
from app.executor.job import Job, Units
from engine import GenerationRequest, LoadedModel
from engine.discovery.embedder import Embedder
from engine.specs import SampleSpec


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    spec = SampleSpec.from_dict(job.order.spec)
    settings = {
        "seed": spec.seed,
        "temperature": spec.temperature,
        "top_p": spec.top_p,
        "max_new_tokens": spec.max_new_tokens,
    }
    adapters = {int(p["id"]): adapter_from(p) for p in job.order.adapters}
    rows: list[tuple[dict[str, Any], GenerationRequest]] = []
    for prompt in spec.prompts:
        if spec.unsteered:
            tag = {"vector_id": None, "prompt": prompt, "scale": 0.0, "block": None, **settings}
            rows.append((tag, request(prompt, settings)))
        for vector_id, block, values in job.order.vectors:
            for scale in spec.scales:
                tag = {"vector_id": vector_id, "prompt": prompt, "scale": scale, "block": block, **settings}
                rows.append((tag, steered(prompt, settings, block, values, scale, adapters.get(vector_id))))
    if not rows:
        return False
    return (yield from decode_rows(lm, job, rows, int(job.order.gallery.get("batch", 16)), 0.0))
