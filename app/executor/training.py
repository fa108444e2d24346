"""The training driver every training task shares: step a trainer one step per unit of the compute
loop, send what a step completes before the next starts, report progress with an ETA."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from app.executor.codec import adapter_to, from_bytes, to_bytes
from app.executor.job import Job, Units
from app.executor.protocol import Resolved, Vectors
from engine import LoadedModel
from engine.methods.adapter_trainer import adapter_kl
from engine.methods.adapters import Adapter
from engine.progress import Progress
from engine.prompts import PromptBatch
from engine.steer.metrics import next_token_kl

TRAIN_SHARE = 0.9  # of the progress bar; the gallery samples take the rest
Completed = TypeVar("Completed", covariant=True)


class Trainer(Protocol[Completed]):
    """What the driver steps: the engine's MELBO, DCT, adapter and chain trainers."""

    @property
    def finished(self) -> bool: ...

    def step(self) -> Completed:
        """One optimizer step (or probe, or iteration); what it completed, falsy if nothing."""


def stack(rows: Sequence[bytes], width: int) -> Tensor:
    """Stored vectors as one tensor [n, width] (empty when there are none)."""
    return torch.stack([from_bytes(r) for r in rows]) if rows else torch.zeros(0, width)


def train(
    job: Job,
    trainer: Trainer[Completed],
    finish: Callable[[Completed], None],
    report: Callable[[bool], None],
) -> Units:
    """Step a trainer to its end, one step per unit. What a step completes goes to `finish` (sent,
    and so stored, before the next step starts); `report` hears after every step whether one did."""
    while not trainer.finished:
        if job.cancelled:
            return True
        completed = trainer.step()
        job.clock.tick(phase="training")
        if completed:
            finish(completed)
        report(bool(completed))
        yield
    return False


def resolve(
    job: Job, source: int, target: int, radius: float | None = None, residual_norm: float | None = None
) -> None:
    """Send what the run resolved (blocks, R, residual norm) once, and again when it changes, so the
    run page shows them while the first vectors train."""
    resolved = (source, target, radius, residual_norm)
    if resolved != job.resolved:
        job.resolved = resolved
        job.emit(Resolved(*job.ids, source=source, target=target, radius=radius, residual_norm=residual_norm))


def report_training(job: Job, p: Progress, *, stored: int, wanted: int, force: bool, note: str = "") -> None:
    """Progress of a training phase: vectors done and in training, the batch's step of its budget,
    early stops, and an ETA from the measured time per step."""
    eta = job.clock.eta(p.expected_steps_left)
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


def send_vectors(
    lm: LoadedModel,
    job: Job,
    batch: PromptBatch,
    source: int,
    trained: Any,
    *,
    adapters: Sequence[Adapter] | None = None,
    result: dict[str, Any] | None = None,
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
    job.emit(
        Vectors(
            *job.ids,
            rows=rows,
            source=source,
            target=trained.target,
            radius=trained.radius,
            residual_norm=trained.residual_norm,
            result=result or {},
        )
    )
    return [(row["index"], source, row["values"]) for row in rows]
