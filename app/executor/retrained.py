"""The driver of the tasks that refine a stored vector into new ones (R-path, generalize, search):
the engine's units, one per unit of the compute loop, then one `vectors` event with the new
vectors (children of the vector) and what the run page shows as the run's result. Their vectors
come together at the end, so a cancelled refinement keeps nothing; a resumed job whose vectors are
stored goes straight to the gallery."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from app.executor.codec import from_bytes, to_bytes
from app.executor.job import Job, Units
from app.executor.protocol import Vectors
from app.executor.training import TRAIN_SHARE
from engine.models import LoadedModel
from engine.prompts import encode_prompts
from engine.steer.metrics import next_token_kl

Steps = Generator[tuple[Any, ...], None, Any]  # the engine's units: each says where it is


@dataclass(frozen=True)
class Found:
    """What a refinement found, as the `vectors` event carries it."""

    rows: list[dict[str, Any]]
    result: dict[str, Any]  # the run's result (under the run's kind, as the run page reads it)
    target: int | None = None  # the target block and R it resolved, if it has an objective
    radius: float | None = None


def parent(job: Job) -> Tensor:
    assert job.order.theta0 is not None, "a refinement's order carries its vector"
    return from_bytes(job.order.theta0)


def earlier(job: Job) -> Tensor | None:
    """The vectors it stays orthogonal to (the earlier ones of its vector's orthogonal run)."""
    return torch.stack([from_bytes(v) for _, _, v in job.order.vectors]) if job.order.vectors else None


def rows(
    lm: LoadedModel, prompts: tuple[str, ...], block: int, vectors: Tensor, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Vector rows as a `vectors` event carries them, each with its next-token KL on the prompts."""
    kls = next_token_kl(lm.model, encode_prompts(lm.tokenizer, list(prompts)), block, vectors)
    return [
        {
            "index": i,
            "block": block,
            "values": to_bytes(vector),
            "norm": float(vector.norm()),
            "objective": record.pop("objective", None),
            "kl": float(kl),
            "metrics": record,
        }
        for i, (vector, record, kl) in enumerate(zip(vectors, records, kls, strict=True))
    ]


def refine(
    job: Job,
    what: str,
    steps: Callable[[], Steps],
    where: Callable[[tuple[Any, ...]], tuple[float, str]],
    finish: Callable[[Any], Found],
) -> Units:
    """Run the engine's `steps` to their end; `where` says how far a unit is (0..1, in words),
    `finish` turns what they found into the event's rows and result."""
    if job.order.done:
        block = int(job.order.spec.get("source", job.order.spec.get("block", 0)))
        job.vectors = [(i, block, b) for i, b in enumerate(job.order.done)]
        return False
    units = steps()
    job.progress(0.0, f"{what}: starting", force=True)
    yield
    while True:
        if job.cancelled:
            return True
        try:
            unit = next(units)
        except StopIteration as end:
            found = finish(end.value)
            job.emit(
                Vectors(
                    *job.ids,
                    rows=found.rows,
                    source=found.rows[0]["block"],
                    target=found.target,
                    radius=found.radius,
                    result=found.result,
                )
            )
            job.vectors = [(r["index"], r["block"], r["values"]) for r in found.rows]
            return False
        job.clock.tick(phase="training")
        fraction, message = where(unit)
        job.progress(TRAIN_SHARE * fraction, message, phase=job.order.kind)
        yield
