"""Steering adapters in the worker's compute loop (tiny model, this process): a run resumed from
what it stored trains the adapters the uninterrupted run would have, its gallery steers with the
stored factors, and no unit leaves a hook behind on any module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from app.executor.loop import ComputeLoop
from app.executor.protocol import FromWorker, Generate, Generations, Vectors
from tests.app.test_compute_loop import drain, events, finished, loop, order, replies

__all__ = ["events", "loop"]  # the fixtures, used by name


def all_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def rows(events: list[FromWorker], job: int) -> dict[int, dict[str, Any]]:
    return {r["index"]: r for e in events if isinstance(e, Vectors) and e.job == job for r in e.rows}


def texts(events: list[FromWorker], job: int) -> dict[tuple[Any, str], str]:
    return {
        (r["vector_index"], r["prompt"]): r["text"]
        for e in events
        if isinstance(e, Generations) and e.job == job
        for r in e.rows
    }


def test_a_resumed_adapter_run_carries_on_where_it_stopped(
    loop: ComputeLoop, events: list[FromWorker], tiny_dir: Path
) -> None:
    model = str(tiny_dir)
    lm = loop.models.get(model, set())
    with torch.no_grad():
        lm.model(input_ids=torch.tensor([[1, 2, 3]]))
    before = all_hooks(lm.model)
    prompts = ["Tell me a story.", "Hi"]
    # R strong enough to change the tiny model's greedy text.
    spec = {"prompts": prompts, "model": model, "n_vectors": 3, "steps": 3, "rank": 2, "radius": 40.0}
    gallery = {"prompts": prompts, "max_new_tokens": 5, "batch": 4}
    loop.put(order(1, "adapter", {**spec, "batch_size": 1}, gallery=gallery))
    drain(loop, lambda: None)
    whole = rows(events, 1)
    assert sorted(whole) == [0, 1, 2] and all(r["adapter"]["rank"] == 2 for r in whole.values())
    first = whole[0]
    stored = {**first["adapter"], "id": 7, "index": 0}
    resume = {**spec, "batch_size": 1}
    loop.put(order(2, "adapter", resume, gallery=gallery, done=[first["values"]], adapters=[stored]))
    loop.put(
        Generate(
            id="g",
            model=model,
            rows=[{"prompt": "Hi", "vector": first["values"], "adapter": stored, "scale": 3.0}],
        )
    )
    drain(loop, lambda: None)
    assert all_hooks(lm.model) == before
    resumed = rows(events, 2)
    assert sorted(resumed) == [1, 2]  # index 0 was stored; the rest are the uninterrupted run's
    for i in (1, 2):
        assert resumed[i]["adapter"]["factors"] == whole[i]["adapter"]["factors"]
        assert resumed[i]["values"] == whole[i]["values"]
    gallery_texts = texts(events, 2)
    assert gallery_texts == texts(events, 1)  # index 0 steers with its stored factors
    assert any(gallery_texts[(0, p)] != gallery_texts[(None, p)] for p in prompts)
    assert replies(events)["g"].ok
    assert dict(finished(events)) == {1: "succeeded", 2: "succeeded"}
