"""What the worker does for each kind of job, as a generator of units: it yields after every
training step or decode step, so the compute loop can run other work between two of them.

Each finished chunk (a fast-mode batch, one vector in reference mode, a chain batch) is sent, and
stored, before the next starts; a resumed job hands the stored vectors back in and the engine
carries on at the next index with the starts an uninterrupted run would have used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from app.executor.base import Event, Order
from app.executor.codec import from_bytes, to_bytes
from app.executor.refine import scale_sweep
from engine import (
    CalibrateSpec,
    ChainSpec,
    Decoder,
    GenerationRequest,
    LoadedModel,
    MelboSpec,
    encode_prompts,
)
from engine.calibrate import Calibrator
from engine.chains import ChainTrainer
from engine.dct import DctTrainer
from engine.detectors import judge_steps
from engine.discovery import payload_steps
from engine.embedder import Embedder
from engine.errors import EngineError
from engine.melbo import MelboTrainer
from engine.metrics import next_token_kl
from engine.progress import Progress
from engine.specs import DctSpec, SampleSpec

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


def _left(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f" · about {seconds:.0f} s left" if seconds < 120 else f" · about {seconds / 60:.0f} min left"


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    """Carry out the order, one unit per `next()`; returns True if it was cancelled. `embedder`
    gives the worker's sentence-embedding model (loaded when scoring first needs it)."""
    kind = job.order.kind
    job.event("started", model=lm.info.to_dict())
    if kind in ("melbo", "random"):
        return (yield from _melbo(lm, job)) or (yield from _gallery(lm, job))
    if kind == "dct":
        return (yield from _dct(lm, job)) or (yield from _gallery(lm, job))
    if kind == "chain":
        return (yield from _chain(lm, job)) or (yield from _gallery(lm, job))
    if kind == "calibrate":
        return (yield from _calibrate(lm, job))
    if kind == "generate":
        return (yield from _samples(lm, job))
    if kind == "score":
        return (yield from _score(lm, job, embedder))
    if kind == "detect":
        return (yield from _judge(lm, job))
    if kind == "scale_sweep":
        return (yield from scale_sweep(lm, job, embedder))
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
        " · ".join(parts) + _left(eta),
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


def _melbo(lm: LoadedModel, job: Job) -> Units:
    spec = MelboSpec.from_dict(job.order.spec)
    stored = _stack(job.order.done, lm.info.width)
    trainer = MelboTrainer(lm, spec, orthogonal_to=stored, on_progress=job.point)
    source = trainer.problem.source
    job.vectors = [(i, source, b) for i, b in enumerate(job.order.done)]
    batch = encode_prompts(lm.tokenizer, spec.prompts)
    first = len(job.order.done)
    while not trainer.finished:
        if job.cancelled:
            return True
        finished = trainer.step()
        job.clock.tick()
        if finished:
            result = trainer.take()
            kls = next_token_kl(lm.model, batch, source, result.vectors)
            job.event(
                "vectors",
                source=source,
                target=result.target,
                radius=result.radius,
                residual_norm=result.residual_norm,
                rows=[
                    {
                        "index": rec.index,
                        "block": source,
                        "values": to_bytes(vec),
                        "norm": float(vec.norm()),
                        "objective": rec.objective,
                        "kl": float(kl),
                        "metrics": {
                            k: v for k, v in rec.to_dict().items() if k not in ("index", "objective")
                        },
                    }
                    for vec, rec, kl in zip(result.vectors, result.records, kls, strict=True)
                ],
            )
            job.vectors += [
                (r.index, source, to_bytes(v)) for r, v in zip(result.records, result.vectors, strict=True)
            ]
        _report_training(job, trainer.progress(), stored=first, wanted=spec.n_vectors, force=bool(finished))
        yield
    return False


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
    while not trainer.finished:
        if job.cancelled:
            return True
        records = trainer.step()
        job.clock.tick()
        if records:
            result = trainer.result()
            kls = next_token_kl(lm.model, batch, source, result.vectors)
            job.event(
                "vectors",
                source=source,
                target=result.target,
                radius=result.radius,
                residual_norm=result.residual_norm,
                result={"calibration": result.calibration} if result.calibration else {},
                rows=[
                    {
                        "index": rec.index,
                        "block": source,
                        "values": to_bytes(vec),
                        "norm": float(vec.norm()),
                        "objective": rec.objective,
                        "kl": float(kl),
                        "metrics": {
                            k: v for k, v in rec.to_dict().items() if k not in ("index", "objective")
                        },
                    }
                    for vec, rec, kl in zip(result.vectors, result.records, kls, strict=True)
                ],
            )
            job.vectors = [
                (r.index, source, to_bytes(v)) for r, v in zip(result.records, result.vectors, strict=True)
            ]
        t = trainer.transcoder
        if t is None:
            probes = trainer.calibrator.probes if trainer.calibrator is not None else 0
            job.progress(0.0, f"calibrating R: probe {probes}", phase="calibration")
        else:
            where = f"iteration {t.iteration + 1}/{t.iterations}" if t.phase == "iterations" else ""
            _report_training(
                job,
                trainer.progress(),
                stored=0,
                wanted=spec.n_vectors,
                force=bool(records),
                note=where or DCT_PHASES.get(t.phase, ""),
            )
        yield
    return False


def _chain(lm: LoadedModel, job: Job) -> Units:
    spec = ChainSpec.from_dict(job.order.spec)
    assert job.order.theta0 is not None, "a chain order carries its θ₀"
    previous = _stack(job.order.done, lm.info.width)
    trainer = ChainTrainer(lm, spec, from_bytes(job.order.theta0), previous=previous, on_progress=job.point)
    job.vectors = [(i, trainer.source, b) for i, b in enumerate(job.order.done)]
    while not trainer.finished:
        if job.cancelled:
            return True
        new = trainer.step()
        job.clock.tick()
        if new:
            chain = trainer.vectors
            summary = {
                k: v for k, v in trainer.result().to_dict().items() if k not in ("records", "settings")
            }
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
        stopped = "" if trainer.reason == "completed" else f"stopped: {trainer.reason.replace('_', ' ')}"
        report = trainer.progress()
        _report_training(
            job, report, stored=len(job.order.done), wanted=spec.n_vectors, force=bool(new), note=stopped
        )
        yield
    return False


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


def _request(
    prompt: str, sampling: dict[str, Any], block: int | None = None, terms: Any = ()
) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt,
        block=block,
        terms=terms,
        seed=int(sampling["seed"]),
        temperature=float(sampling["temperature"]),
        top_p=float(sampling["top_p"]),
        max_new_tokens=int(sampling["max_new_tokens"]),
    )


def _decode_rows(
    lm: LoadedModel, job: Job, rows: list[tuple[dict[str, Any], GenerationRequest]], batch: int, start: float
) -> Units:
    """Decode rows in a continuous batch of `batch`, sending finished generations in groups."""
    decoder = Decoder(lm, max_rows=batch)
    waiting: Iterator[tuple[int, tuple[dict[str, Any], GenerationRequest]]] = iter(enumerate(rows))
    tags: dict[int, dict[str, Any]] = {}
    finished: list[dict[str, Any]] = []
    sent = 0
    more = True

    def send() -> None:
        nonlocal sent, finished
        if finished:
            job.event("generations", rows=finished)
            sent, finished = sent + len(finished), []
            eta = job.clock.eta(
                math.ceil((len(rows) - sent) / batch) * max(r.max_new_tokens for _, r in rows)
            )
            job.progress(
                start + (1 - start) * sent / len(rows),
                f"samples {sent}/{len(rows)}{_left(eta)}",
                force=True,
                phase="samples",
                samples_done=sent,
                samples_total=len(rows),
                eta_s=eta,
            )

    while more or decoder:
        if job.cancelled:
            send()  # what finished is kept
            return True
        while more and len(decoder) < 2 * batch:  # added as room comes: a gallery can be large
            item = next(waiting, None)
            if item is None:
                more = False
                break
            i, (tag, request) = item
            tags[i] = tag
            decoder.add(i, request)
        step = decoder.step()
        job.clock.tick()
        for key, result in step.finished:
            tag = tags.pop(cast(int, key))
            finished.append(
                {
                    **tag,
                    "text": result.text,
                    "n_tokens": result.n_tokens,
                    "finish_reason": result.finish_reason,
                }
            )
        if len(finished) >= batch or not (more or decoder):
            send()
        yield
    return False


def _gallery(lm: LoadedModel, job: Job) -> Units:
    """Greedy samples of every vector of the run (and the unsteered model) on the run's prompts."""
    gallery = job.order.gallery
    if not gallery:
        return False
    done = {(d[0], d[1]) for d in gallery.get("done", [])}
    settings: dict[str, Any] = {
        "seed": 0,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_new_tokens": int(gallery["max_new_tokens"]),
    }
    rows: list[tuple[dict[str, Any], GenerationRequest]] = []
    for p, prompt in enumerate(gallery["prompts"]):
        if (None, p) not in done:
            tag = {"vector_index": None, "prompt": prompt, "scale": 0.0, "block": None, **settings}
            rows.append((tag, _request(prompt, settings)))
    for index, block, values in job.vectors:
        for p, prompt in enumerate(gallery["prompts"]):
            if (index, p) not in done:
                tag = {"vector_index": index, "prompt": prompt, "scale": 1.0, "block": block, **settings}
                rows.append((tag, _request(prompt, settings, block, [(from_bytes(values), 1.0)])))
    if not rows:
        return False
    return (yield from _decode_rows(lm, job, rows, int(gallery.get("batch", 16)), TRAIN_SHARE))


def _samples(lm: LoadedModel, job: Job) -> Units:
    """A generation job: each given vector at each scale on each prompt, plus the unsteered ones."""
    spec = SampleSpec.from_dict(job.order.spec)
    settings = {
        "seed": spec.seed,
        "temperature": spec.temperature,
        "top_p": spec.top_p,
        "max_new_tokens": spec.max_new_tokens,
    }
    rows: list[tuple[dict[str, Any], GenerationRequest]] = []
    for prompt in spec.prompts:
        if spec.unsteered:
            tag = {"vector_id": None, "prompt": prompt, "scale": 0.0, "block": None, **settings}
            rows.append((tag, _request(prompt, settings)))
        for vector_id, block, values in job.order.vectors:
            vector = from_bytes(values)
            for scale in spec.scales:
                tag = {"vector_id": vector_id, "prompt": prompt, "scale": scale, "block": block, **settings}
                rows.append((tag, _request(prompt, settings, block, [(vector, scale)])))
    if not rows:
        return False
    return (yield from _decode_rows(lm, job, rows, int(job.order.gallery.get("batch", 16)), 0.0))


def _score(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
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
            f"scoring {len(rows)} completions: {done}/{total}{_left(eta)}",
            phase="scoring",
            eta_s=eta,
        )
        yield


def _judge(lm: LoadedModel, job: Job) -> Units:
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
        job.progress(done / total, f"judged {done}/{total} completions{_left(eta)}", phase="judging")
        yield
