"""What the worker does for each kind of job, as a generator of units: it yields after every
training step or decode step, so the compute loop can run other work between two of them.

Each finished chunk (a fast-mode batch, one vector in reference mode, a chain batch) is sent, and
stored, before the next starts; a resumed job hands the stored vectors back in and the engine
carries on at the next index with the starts an uninterrupted run would have used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import torch
from torch import Tensor

from app.executor.base import Event, Order
from app.executor.codec import adapter_from, adapter_to, from_bytes, to_bytes
from app.executor.refine import RETRAINED, retrained, scale_sweep
from app.executor.samples import gallery, samples
from app.executor.scoring import judge, score
from engine import (
    CalibrateSpec,
    ChainSpec,
    LoadedModel,
    MelboSpec,
    encode_prompts,
)
from engine.discovery.embedder import Embedder
from engine.methods.adapter_trainer import AdapterTrainer, adapter_kl
from engine.methods.adapters import Adapter
from engine.methods.calibrate import Calibrator
from engine.methods.chains import ChainTrainer
from engine.methods.dct import DctTrainer
from engine.methods.melbo import MelboTrainer
from engine.progress import Progress
from engine.specs import AdapterSpec, DctSpec
from engine.steer.metrics import next_token_kl

Units = Generator[None, None, bool]  # yields between units; returns True if the job was cancelled
PROGRESS_EVERY_S = 0.25  # progress events per job at most this often
TRAIN_SHARE = 0.9  # of the progress bar; the gallery samples take the rest
DCT_PHASES = {"jacobian": "the Jacobian start", "start": "output directions", "ranking": "ranking by α"}


class Job:
    """One order's reporting: events tagged with job and attempt, throttled progress, cancel flag."""

    def __init__(self, order: Order, send: Callable[[Event], None]) -> None:
        self.order, self.send = order, send
        self.cancelled = False  # set by the compute loop when a cancel arrives
        self.points: list[tuple[int, int, float]] = []  # objective curve points since the last event
        self.last = 0.0
        self.vectors: list[tuple[int, int, bytes]] = []  # (index, block, values): the gallery's vectors
        self.adapters: dict[int, Adapter] = {}  # index -> adapter, for the gallery's vectors that are one
        self.clock = Clock()

    def event(self, kind: str, **data: Any) -> None:
        self.send({"type": kind, "job": self.order.job_id, "attempt": self.order.attempt, **data})

    def point(self, vector: int, step: int, value: float) -> None:
        self.points.append((vector, step, value))

    def progress(self, fraction: float, message: str, *, force: bool = False, **figures: Any) -> None:
        if force or time.monotonic() - self.last >= PROGRESS_EVERY_S:
            self.event(
                "progress", progress=min(fraction, 1.0), message=message, points=self.points, **figures
            )
            self.points, self.last = [], time.monotonic()


class Clock:
    """Wall time between a job's units (other work interleaved included): what an ETA needs."""

    def __init__(self) -> None:
        self.mark: float | None = None
        self.unit_s = 0.0

    def tick(self) -> None:
        now = time.perf_counter()
        if self.mark is not None:
            took = now - self.mark
            self.unit_s = took if self.unit_s == 0 else 0.8 * self.unit_s + 0.2 * took
        self.mark = now

    def eta(self, units: float) -> float | None:
        return round(units * self.unit_s, 1) if self.unit_s > 0 else None

    @staticmethod
    def left(seconds: float | None) -> str:
        """An ETA as a progress message says it ("" while it is not known)."""
        if seconds is None:
            return ""
        return f" · about {seconds:.0f} s left" if seconds < 120 else f" · about {seconds / 60:.0f} min left"


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    """Carry out the order, one unit per `next()`; returns True if it was cancelled. `embedder`
    gives the worker's sentence-embedding model (loaded when scoring first needs it)."""
    kind = job.order.kind
    job.event("started", model=lm.info.to_dict())
    if kind in ("melbo", "random"):
        return (yield from _melbo(lm, job)) or (yield from gallery(lm, job, start=TRAIN_SHARE))
    if kind == "dct":
        return (yield from _dct(lm, job)) or (yield from gallery(lm, job, start=TRAIN_SHARE))
    if kind == "adapter":
        return (yield from _adapters(lm, job)) or (yield from gallery(lm, job, start=TRAIN_SHARE))
    if kind == "chain":
        return (yield from _chain(lm, job)) or (yield from gallery(lm, job, start=TRAIN_SHARE))
    if kind == "calibrate":
        return (yield from _calibrate(lm, job))
    if kind == "generate":
        return (yield from samples(lm, job))
    if kind == "score":
        return (yield from score(lm, job, embedder))
    if kind == "detect":
        return (yield from judge(lm, job))
    if kind == "scale_sweep":
        return (yield from scale_sweep(lm, job, embedder))
    if kind in RETRAINED:
        return (yield from retrained(lm, job, embedder, share=TRAIN_SHARE)) or (
            yield from gallery(lm, job, start=TRAIN_SHARE)
        )
    raise ValueError(f"unknown job kind {kind}")


def _stack(rows: Sequence[bytes], width: int) -> Tensor:
    return torch.stack([from_bytes(r) for r in rows]) if rows else torch.zeros(0, width)


def _report_training(job: Job, p: Progress, *, stored: int, wanted: int, force: bool, note: str = "") -> None:
    """Progress of a training phase: vectors done and in training, the batch's step of its budget,
    early stops, and an ETA from the measured time per step."""
    eta = job.clock.eta(p.steps_left)
    parts = [f"{stored + p.done}/{wanted} vectors"]
    if p.training:
        parts.append(f"{p.training} in training, step {p.step}/{p.budget}")
    if p.early_stops:
        parts.append(f"{p.early_stops} batch{'es' if p.early_stops > 1 else ''} converged early")
    if note:
        parts.append(note)
    job.progress(
        TRAIN_SHARE * p.fraction,
        " · ".join(parts) + job.clock.left(eta),
        force=force,
        phase="training",
        vectors_done=stored + p.done,
        vectors_total=wanted,
        vectors_training=p.training,
        step=p.step,
        budget=p.budget,
        early_stops=p.early_stops,
        eta_s=eta,
    )


def _send_vectors(
    lm: LoadedModel,
    job: Job,
    batch: Any,
    source: int,
    trained: Any,
    *,
    adapters: Sequence[Adapter] | None = None,
    **extra: Any,
) -> list[tuple[int, int, bytes]]:
    """Send a trained chunk (MELBO, DCT or adapters: vectors with per-vector records) with each one's
    next-token KL; its (index, block, values) for the gallery. With `adapters`, the vectors are their
    mean changes, and each row carries the adapter's factors, which are what steers (and its KL)."""
    if adapters is None:
        kls = next_token_kl(lm.model, batch, source, trained.vectors)
    else:
        kls = adapter_kl(lm, batch, list(adapters))
    rows = [
        {
            "index": rec.index,
            "block": source,
            "values": to_bytes(vec),
            "norm": float(vec.norm()),
            "objective": rec.objective,
            "kl": float(kl),
            "metrics": {k: v for k, v in rec.to_dict().items() if k not in ("index", "objective")},
        }
        for vec, rec, kl in zip(trained.vectors, trained.records, kls, strict=True)
    ]
    for row, adapter in zip(rows, adapters or (), strict=False):
        row["adapter"] = adapter_to(adapter)
    job.event(
        "vectors",
        source=source,
        target=trained.target,
        radius=trained.radius,
        residual_norm=trained.residual_norm,
        **extra,
        rows=rows,
    )
    return [(row["index"], source, row["values"]) for row in rows]


def _train(job: Job, trainer: Any, finish: Callable[[Any], None], report: Callable[[bool], None]) -> Units:
    """Step a trainer to its end, one step per unit. What a step completes goes to `finish` (sent,
    and so stored, before the next step starts); `report` hears after every step whether one did."""
    while not trainer.finished:
        if job.cancelled:
            return True
        completed = trainer.step()
        job.clock.tick()
        if completed:
            finish(completed)
        report(bool(completed))
        yield
    return False


def _melbo(lm: LoadedModel, job: Job) -> Units:
    spec = MelboSpec.from_dict(job.order.spec)
    stored = _stack(job.order.done, lm.info.width)
    trainer = MelboTrainer(lm, spec, orthogonal_to=stored, on_progress=job.point)
    source = trainer.problem.source
    job.vectors = [(i, source, b) for i, b in enumerate(job.order.done)]
    batch = encode_prompts(lm.tokenizer, spec.prompts)
    first = len(job.order.done)

    def finish(_: object) -> None:
        job.vectors += _send_vectors(lm, job, batch, source, trainer.take())

    def report(force: bool) -> None:
        _report_training(job, trainer.progress(), stored=first, wanted=spec.n_vectors, force=force)

    return (yield from _train(job, trainer, finish, report))


def _dct(lm: LoadedModel, job: Job) -> Units:
    """DCT: a calibration probe, then one batch of factors per unit; the vectors come together at
    the end, ranked by α² (a resumed run that stored them all goes straight to the gallery)."""
    spec = DctSpec.from_dict(job.order.spec)
    if len(job.order.done) >= spec.n_vectors:
        source, _ = spec.span(lm.info)
        job.vectors = [(i, source, b) for i, b in enumerate(job.order.done)]
        return False
    trainer = DctTrainer(lm, spec)
    batch = encode_prompts(lm.tokenizer, spec.prompts)
    source = trainer.source

    def finish(_: object) -> None:
        result = trainer.result()
        extra: dict[str, Any] = {}
        if result.calibration:
            extra["result"] = {"calibration": result.calibration}
        job.vectors = _send_vectors(lm, job, batch, source, result, **extra)

    def report(force: bool) -> None:
        t = trainer.transcoder
        if t is None:
            probes = trainer.calibrator.probes if trainer.calibrator is not None else 0
            job.progress(0.0, f"calibrating R: probe {probes}", phase="calibration")
            return
        where = f"iteration {t.iteration + 1}/{t.iterations}" if t.phase == "iterations" else ""
        note = where or DCT_PHASES.get(t.phase, "")
        _report_training(job, trainer.progress(), stored=0, wanted=spec.n_vectors, force=force, note=note)

    return (yield from _train(job, trainer, finish, report))


def _adapters(lm: LoadedModel, job: Job) -> Units:
    """Steering adapters, a batch per chunk like fast MELBO; each is sent with its factors, its mean
    change (the vector it is browsed as) and its next-token KL; the gallery steers with the factors."""
    spec = AdapterSpec.from_dict(job.order.spec)
    first = len(job.order.done)
    trainer = AdapterTrainer(lm, spec, first=first)
    source = trainer.source
    job.vectors = [(i, source, b) for i, b in enumerate(job.order.done)]
    job.adapters = {int(p["index"]): adapter_from(p) for p in job.order.adapters}
    batch = encode_prompts(lm.tokenizer, spec.prompts)

    def finish(_: object) -> None:
        trained = trainer.take()
        job.vectors += _send_vectors(lm, job, batch, source, trained, adapters=trained.adapters)
        job.adapters.update(zip((r.index for r in trained.records), trained.adapters, strict=True))

    def report(force: bool) -> None:
        _report_training(job, trainer.progress(), stored=first, wanted=spec.n_vectors, force=force)

    return (yield from _train(job, trainer, finish, report))


def _chain(lm: LoadedModel, job: Job) -> Units:
    spec = ChainSpec.from_dict(job.order.spec)
    assert job.order.theta0 is not None, "a chain order carries its θ₀"
    previous = _stack(job.order.done, lm.info.width)
    trainer = ChainTrainer(lm, spec, from_bytes(job.order.theta0), previous=previous, on_progress=job.point)
    job.vectors = [(i, trainer.source, b) for i, b in enumerate(job.order.done)]

    def finish(new: list[Any]) -> None:
        chain = trainer.vectors
        summary = {k: v for k, v in trainer.result().to_dict().items() if k not in ("records", "settings")}
        job.event(
            "vectors",
            source=trainer.source,
            target=trainer.target,
            result=summary,
            rows=[
                {
                    "index": r.index,
                    "block": trainer.source,
                    "values": to_bytes(chain[r.index]),
                    "norm": r.norm,
                    "objective": r.loss,
                    "kl": r.kl,
                    "metrics": {"loss": r.loss, "steps": r.steps},
                }
                for r in new
            ],
        )
        job.vectors += [(r.index, trainer.source, to_bytes(chain[r.index])) for r in new]

    def report(force: bool) -> None:
        stopped = "" if trainer.reason == "completed" else f"stopped: {trainer.reason.replace('_', ' ')}"
        stored = len(job.order.done)
        _report_training(
            job, trainer.progress(), stored=stored, wanted=spec.n_vectors, force=force, note=stopped
        )

    return (yield from _train(job, trainer, finish, report))


def _calibrate(lm: LoadedModel, job: Job) -> Units:
    calibrator = Calibrator(lm, CalibrateSpec.from_dict(job.order.spec))
    yield
    while not calibrator.finished:
        if job.cancelled:
            return True
        radius, ratio = calibrator.step()
        job.progress(0.5, f"R {radius:.3g}: ratio {ratio:.3g}", phase="calibration")
        yield
    result = calibrator.result()
    job.event("result", result={"calibration": result.to_dict()}, radius=result.radius)
    return False
