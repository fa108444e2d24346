"""Refining a vector in the worker: its scale sweep as units of the compute loop (a decode step, a
chunk of KL, or a scoring unit each), sent back as one `scale_sweep` event when it is done; its
R-path, generalization and search, sent back as the run's vectors and result."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from app.executor.codec import from_bytes, to_bytes
from engine.discovery.embedder import Embedder
from engine.models import LoadedModel
from engine.prompts import encode_prompts
from engine.refine.generalize import generalize_steps
from engine.refine.rpath import rpath_steps
from engine.refine.scale_sweep import scale_sweep_steps
from engine.refine.search import search_steps
from engine.refine.specs import GeneralizeSpec, RPathSpec, SearchSpec
from engine.specs import ScaleSweepSpec
from engine.steer.metrics import next_token_kl

if TYPE_CHECKING:
    from app.executor.tasks import Job, Units

# Where each phase sits on the job's progress bar (decoding is most of the work, then scoring).
PHASES = {"completions": (0.0, 0.6), "kl": (0.6, 0.65), "scoring": (0.65, 1.0)}
WORDS = {"completions": "completions", "kl": "next-token KL, scale chunk", "scoring": "scoring"}


def scale_sweep(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    spec = ScaleSweepSpec.from_dict(job.order.spec)
    assert job.order.theta0 is not None, "a scale sweep's order carries its vector"
    vector = from_bytes(job.order.theta0)
    n = len(spec.prompts) * len(spec.scales)
    job.progress(0.0, f"sweeping {len(spec.scales)} scales on {len(spec.prompts)} prompts", force=True)
    yield
    batch = int(job.order.gallery.get("batch", 16))
    steps = scale_sweep_steps(lm, embedder(), vector, spec, batch_size=batch)
    while True:
        if job.cancelled:
            return True  # nothing is stored before the end: a cancelled sweep leaves no half
        try:
            phase, done, total = next(steps)
        except StopIteration as end:
            job.event("scale_sweep", found=end.value.to_dict())
            return False
        job.clock.tick()
        low, high = PHASES[phase]
        job.progress(
            low + (high - low) * done / max(total, 1),
            f"{WORDS[phase]} {done}/{total} ({n} completions in all)",
            phase=phase,
        )
        yield


# Refining a vector into new ones (R-path, generalize, search): the engine's units, then one
# `vectors` event with the new vectors (children of the vector) and what the run page shows as the
# run's result; the gallery follows (app/executor/tasks.py). A resumed job whose vectors are stored
# goes straight to the gallery.

RETRAINED = ("rpath", "generalize", "search")
WHAT = {"rpath": "R-path", "generalize": "training on more prompts", "search": "search"}


def _rows(
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


def retrained(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder], *, share: float) -> Units:
    """An R-path, generalize or search run, one engine unit per unit of the compute loop; `share`:
    the part of the progress bar it fills (the gallery fills the rest)."""
    kind = job.order.kind
    if job.order.done:
        block = int(job.order.spec.get("source", job.order.spec.get("block", 0)))
        job.vectors = [(i, block, b) for i, b in enumerate(job.order.done)]
        return False
    assert job.order.theta0 is not None, "a refinement's order carries its vector"
    vector = from_bytes(job.order.theta0)
    batch = int(job.order.gallery.get("batch", 16))
    units: Generator[tuple[Any, ...], None, Any]
    earlier = torch.stack([from_bytes(v) for _, _, v in job.order.vectors]) if job.order.vectors else None
    if kind == "rpath":
        units = rpath_steps(lm, vector, RPathSpec.from_dict(job.order.spec), orthogonal_to=earlier)
    elif kind == "generalize":
        spec = GeneralizeSpec.from_dict(job.order.spec)
        units = generalize_steps(lm, embedder(), vector, spec, orthogonal_to=earlier, batch_size=batch)
    else:
        units = search_steps(lm, vector, SearchSpec.from_dict(job.order.spec), batch_size=batch)
    job.progress(0.0, f"{WHAT[kind]}: starting", force=True)
    yield
    while True:
        if job.cancelled:
            return True  # its vectors come together at the end: a cancelled one keeps nothing
        try:
            unit = next(units)
        except StopIteration as end:
            rows, result, resolved = _finish(lm, job, end.value)
            job.event("vectors", source=rows[0]["block"], **resolved, result=result, rows=rows)
            job.vectors = [(r["index"], r["block"], r["values"]) for r in rows]
            return False
        job.clock.tick()
        fraction, message = _where(kind, job.order.spec, unit)
        job.progress(share * fraction, message, phase=kind)
        yield


def _where(kind: str, spec: dict[str, Any], unit: tuple[Any, ...]) -> tuple[float, str]:
    """How far a unit is along its run (0..1), in words."""
    if kind == "rpath":
        done, total, step = unit
        return done / total, f"R × {sorted(spec['multiples'])[done]:g} ({done + 1} of {total}), step {step}"
    if kind == "generalize":
        phase, done, total = unit
        low, high = {"training": (0.0, 0.5), "completions": (0.5, 0.8), "scoring": (0.8, 1.0)}[phase]
        return low + (high - low) * done / max(total, 1), f"{phase} {done}/{total}"
    phase, generation, tried = unit
    budget = int(spec["budget"])
    return tried / budget, f"generation {generation}: {phase}, {tried}/{budget} candidates tried"


def _finish(
    lm: LoadedModel, job: Job, found: Any
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The found vectors as rows, the run's result (keyed by the run's kind), and the target block
    and R it resolved."""
    kind, spec = job.order.kind, job.order.spec
    prompts = tuple(spec["prompts"])
    if kind == "rpath":
        records = [
            {**p.to_dict(), "curve": curve} for p, curve in zip(found.points, found.curves, strict=True)
        ]
        rows = _rows(lm, prompts, found.source, found.vectors, records)
        return rows, {"rpath": found.to_dict()}, {"target": found.target, "radius": found.radius}
    if kind == "generalize":
        record = found.record.to_dict()
        record.pop("index")
        rows = _rows(
            lm, prompts, found.source, found.vector[None], [{**record, "cos_parent": found.cos_parent}]
        )
        return rows, {"generalize": found.to_dict()}, {"target": found.target, "radius": found.radius}
    best = found.best
    records = [
        {"score": c.score, "generation": c.generation, "cos_start": c.cos_start, "detector_scores": c.scores}
        for c in best
    ]
    rows = _rows(lm, prompts, int(spec["block"]), torch.stack([c.vector for c in best]), records)
    return rows, {"search": found.to_dict()}, {}
