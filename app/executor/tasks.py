"""What the worker does for each kind of job and interactive request, reported as events.

Training runs in chunks (a fast-mode batch, or one vector in reference mode) so that each finished
chunk is sent, and stored, before the next starts; a resumed job hands the stored vectors back in
and the engine carries on at the next index with the starts an uninterrupted run would have used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from app.executor import interop
from app.executor.base import Event, Order
from app.executor.codec import from_bytes, to_bytes
from engine import (
    CalibrateSpec,
    ChainSpec,
    GenerationRequest,
    LoadedModel,
    MelboSpec,
    calibrate,
    encode_prompts,
    generate,
    next_token_kl,
    stream,
    train_melbo,
)
from engine.chains import train_chain
from engine.metrics import downstream_cosine_matrix
from engine.prompts import format_prompt, target_mask
from engine.segment import Segment
from engine.specs import SampleSpec, default_source, default_target
from engine.validate import check_spec

PROGRESS_EVERY_S = 0.25  # progress events per job at most this often
TRAIN_SHARE = 0.9  # of the progress bar; the gallery samples take the rest


class Job:
    """One order's reporting: events tagged with job and attempt, throttled progress, pauses, cancel."""

    def __init__(self, order: Order, send: Callable[[Event], None], gate: Any, cancelled: Callable[[], bool]):
        self.order, self.send, self.gate, self.cancelled = order, send, gate, cancelled
        self.points: list[tuple[int, int, float]] = []
        self.last = 0.0
        self.fraction = 0.0
        self.message = ""
        self.vectors: list[tuple[int, int, bytes]] = []  # (index, block, values): the gallery's vectors

    def event(self, kind: str, **data: Any) -> None:
        self.send({"type": kind, "job": self.order.job_id, "attempt": self.order.attempt, **data})

    def progress(self, fraction: float, message: str, *, force: bool = False) -> None:
        self.fraction, self.message = fraction, message
        if force or time.monotonic() - self.last >= PROGRESS_EVERY_S:
            self.event("progress", progress=min(fraction, 1.0), message=message, points=self.points)
            self.points, self.last = [], time.monotonic()

    def should_stop(self) -> bool:
        self.gate.wait()  # an interactive request runs now, between two steps
        return self.cancelled()


def run(lm: LoadedModel, job: Job, config: dict[str, Any]) -> bool:
    """Carry out the order; True if it was cancelled."""
    kind = job.order.kind
    job.event("started", model=lm.info.to_dict())
    if kind in ("melbo", "random"):
        return _melbo(lm, job) or _gallery(lm, job)
    if kind == "chain":
        return _chain(lm, job) or _gallery(lm, job)
    if kind == "calibrate":
        spec = CalibrateSpec.from_dict(job.order.spec)
        result = calibrate(
            lm, spec, on_progress=lambda r, ratio: job.progress(0.5, f"R {r:.3g}: ratio {ratio:.3g}")
        )
        job.event("result", result={"calibration": result.to_dict()}, radius=result.radius)
        return False
    if kind == "generate":
        return _samples(lm, job)
    raise ValueError(f"unknown job kind {kind}")


def _stack(rows: Sequence[bytes], width: int) -> Tensor:
    return torch.stack([from_bytes(r) for r in rows]) if rows else torch.zeros(0, width)


def _melbo(lm: LoadedModel, job: Job) -> bool:
    spec = MelboSpec.from_dict(job.order.spec)
    done = _stack(job.order.done, lm.info.width)
    source, target = spec.span(lm.info)
    job.vectors = [(i, source, b) for i, b in enumerate(job.order.done)]
    batch = encode_prompts(lm.tokenizer, spec.prompts)
    chunk = spec.n_vectors if spec.method == "random" else spec.batch_size if spec.mode == "fast" else 1
    total = spec.n_vectors

    def on_step(vector: int, step: int, value: float) -> None:
        job.points.append((vector, step, value))
        budget = max(spec.steps or 300, 1)
        share = (len(done) + min(step + 1, budget) / budget * min(chunk, total - len(done))) / total
        job.progress(TRAIN_SHARE * share, f"vector {vector + 1}/{total}, step {step + 1}")

    while len(done) < total:
        upto = min(len(done) + chunk, total)
        result = train_melbo(
            lm,
            replace(spec, n_vectors=upto),
            on_progress=on_step,
            should_stop=job.should_stop,
            orthogonal_to=done,
        )
        job.progress(job.fraction, job.message, force=True)  # the curve points up to here
        kls: Any = next_token_kl(lm.model, batch, source, result.vectors) if len(result.vectors) else []
        job.event(
            "vectors",
            source=source,
            target=target,
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
                    "metrics": {k: v for k, v in rec.to_dict().items() if k not in ("index", "objective")},
                }
                for vec, rec, kl in zip(result.vectors, result.records, kls, strict=True)
            ],
        )
        done = torch.cat([done, result.vectors])
        job.vectors += [
            (r.index, source, to_bytes(v)) for r, v in zip(result.records, result.vectors, strict=True)
        ]
        job.progress(TRAIN_SHARE * len(done) / total, f"{len(done)}/{total} vectors", force=True)
        if result.cancelled:
            return True
    return False


def _chain(lm: LoadedModel, job: Job) -> bool:
    spec = ChainSpec.from_dict(job.order.spec)
    assert job.order.theta0 is not None, "a chain order carries its θ₀"
    theta0 = from_bytes(job.order.theta0)
    chain = _stack(job.order.done, lm.info.width)
    job.vectors = [(i, spec.source, b) for i, b in enumerate(job.order.done)]
    total, chunk = spec.n_vectors, spec.batch_size if spec.mode == "fast" else 1

    def on_step(vector: int, step: int, value: float) -> None:
        job.points.append((vector, step, value))
        job.progress(TRAIN_SHARE * len(chain) / total, f"vector {vector + 1}/{total}, step {step + 1}")

    while len(chain) < total:
        upto = min(len(chain) + chunk, total)
        result = train_chain(
            lm,
            replace(spec, n_vectors=upto),
            theta0,
            previous=chain,
            on_progress=on_step,
            should_stop=job.should_stop,
        )
        new = [r for r in result.records if not r.resumed]
        job.event(
            "vectors",
            source=result.source,
            target=result.target,
            result={k: v for k, v in result.to_dict().items() if k not in ("records", "settings")},
            rows=[
                {
                    "index": r.index,
                    "block": result.source,
                    "values": to_bytes(result.vectors[r.index]),
                    "norm": r.norm,
                    "objective": r.loss,
                    "kl": r.kl,
                    "metrics": {"loss": r.loss, "steps": r.steps},
                }
                for r in new
            ],
        )
        chain = result.vectors
        job.vectors += [(r.index, result.source, to_bytes(result.vectors[r.index])) for r in new]
        job.progress(TRAIN_SHARE * len(chain) / total, f"{len(chain)}/{total} vectors", force=True)
        if result.stop_reason != "completed":
            return result.cancelled
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


def _rows_in_batches(
    lm: LoadedModel, job: Job, rows: list[tuple[dict[str, Any], GenerationRequest]], batch: int, start: float
) -> bool:
    """Decode rows a batch at a time, sending each batch's generations; True if cancelled."""
    for lo in range(0, len(rows), batch):
        if job.should_stop():
            return True
        part = rows[lo : lo + batch]
        results = generate(lm, [req for _, req in part], batch_size=batch)
        job.event(
            "generations",
            rows=[
                {**tag, "text": res.text, "n_tokens": res.n_tokens, "finish_reason": res.finish_reason}
                for (tag, _), res in zip(part, results, strict=True)
            ],
        )
        share = start + (1 - start) * min(lo + batch, len(rows)) / len(rows)
        job.progress(share, f"samples {min(lo + batch, len(rows))}/{len(rows)}", force=True)
    return False


def _gallery(lm: LoadedModel, job: Job) -> bool:
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
            rows.append(
                (
                    {"vector_index": None, "prompt": prompt, "scale": 0.0, "block": None, **settings},
                    _request(prompt, settings),
                )
            )
    for index, block, values in job.vectors:
        for p, prompt in enumerate(gallery["prompts"]):
            if (index, p) in done:
                continue
            tag = {"vector_index": index, "prompt": prompt, "scale": 1.0, "block": block, **settings}
            rows.append(
                (
                    tag,
                    _request(prompt, settings, block, [(from_bytes(values), 1.0)]),
                )
            )
    return _rows_in_batches(lm, job, rows, int(gallery.get("batch", 16)), TRAIN_SHARE)


def _samples(lm: LoadedModel, job: Job) -> bool:
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
            rows.append(
                (
                    {"vector_id": None, "prompt": prompt, "scale": 0.0, "block": None, **settings},
                    _request(prompt, settings),
                )
            )
        for vector_id, block, values in job.order.vectors:
            vector = from_bytes(values)
            for scale in spec.scales:
                tag = {"vector_id": vector_id, "prompt": prompt, "scale": scale, "block": block, **settings}
                rows.append((tag, _request(prompt, settings, block, [(vector, scale)])))
    return _rows_in_batches(lm, job, rows, int(job.order.gallery.get("batch", 16)), 0.0)


def interactive(
    lm: LoadedModel,
    message: dict[str, Any],
    send: Callable[[Event], None],
    stop: threading.Event,
    config: dict[str, Any],
) -> Any:
    """Serve one interactive request; the return value is the reply."""
    rid = message["id"]
    if message["type"] == "validate":
        spec = check_spec(lm, message["kind"], message["spec"], reserve=int(message.get("reserve", 0)))
        return {"spec": spec, "model": lm.info.to_dict()}
    if message["type"] == "render":
        return _render(lm, message["prompts"])
    if message["type"] == "export_vectors":
        return interop.export(message)
    if message["type"] == "parse_vectors":
        return {**interop.parse({**message, "width": lm.info.width}), "model": lm.info.to_dict()}
    if message["type"] == "downstream":
        return _downstream(lm, message)
    requests = [
        GenerationRequest(
            prompt=row["prompt"],
            block=row.get("block"),
            terms=[(from_bytes(row["vector"]), float(row["scale"]))] if row.get("vector") is not None else [],
            seed=int(row.get("seed", 0)),
            temperature=float(row.get("temperature", 0.0)),
            top_p=float(row.get("top_p", 1.0)),
            max_new_tokens=int(row.get("max_new_tokens", 64)),
        )
        for row in message["rows"]
    ]
    results = []
    first = 0
    if message.get("stream") and requests:
        pieces = stream(lm, requests[0], stop=stop)
        while True:
            try:
                send({"type": "token", "id": rid, "row": 0, "text": next(pieces)})
            except StopIteration as end:
                results.append(end.value)
                break
        first = 1
    if requests[first:]:
        results.extend(generate(lm, requests[first:], stop=stop))
    return {
        "model": lm.info.to_dict(),
        "rows": [{"text": r.text, "n_tokens": r.n_tokens, "finish_reason": r.finish_reason} for r in results],
    }


def _render(lm: LoadedModel, prompts: list[str]) -> dict[str, Any]:
    """How the model sees each prompt (its chat template), its length, and the default blocks."""
    shown = [format_prompt(lm.tokenizer, p) for p in prompts]
    lengths = [len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in shown]
    source = default_source(lm.info.n_blocks)
    return {
        "model": lm.info.to_dict(),
        "prompts": shown,
        "tokens": lengths,
        "source": source,
        "target": default_target(lm.info.n_blocks, source),
    }


def _downstream(lm: LoadedModel, message: dict[str, Any]) -> dict[str, Any]:
    """Cosines between the vectors' effects at the target block on one prompt (user-turn positions)."""
    block = int(message["block"])
    target = message.get("target") or default_target(lm.info.n_blocks, block)
    vectors = torch.stack([from_bytes(v) for v in message["vectors"]])
    batch = encode_prompts(lm.tokenizer, [message["prompt"]])
    device = next(lm.model.parameters()).device
    seg = Segment(lm.model, batch.to(device), block, target)
    matrix = downstream_cosine_matrix(seg, vectors.to(device), target_mask(batch, "user").to(device))
    return {"matrix": matrix.tolist()}
