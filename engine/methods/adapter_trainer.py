"""Training unsupervised steering adapters (engine/methods/adapters.py) with the MELBO objective.

Like fast-mode MELBO: activations up to the source block are cached, along with the input of its
MLP output projection (the adapter's change R·B·(Aᵀa) depends on it and on nothing the adapter
changes), and only the blocks up to the target run each step. A batch of adapters trains together
with Adam; each step projects every column's gradient on its tangent, steps, and puts every
column of A and B back to unit norm. The step size decays over the budget and training stops
once no adapter of the batch still gains.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.methods.adapters import Adapter, adapting, mlp_out, random_factors, stack_rows
from engine.methods.melbo import (
    FAST_ANGLE,
    FAST_FINAL_LR,
    FAST_PATIENCE,
    FAST_STEPS,
    FAST_TOL,
    RADIUS_FRACTION,
    VectorRecord,
)
from engine.models import LoadedModel
from engine.progress import Progress
from engine.prompts import PromptBatch, encode_targets
from engine.specs import AdapterSpec
from engine.steer.metrics import median_norm
from engine.steer.objective import Objective
from engine.steer.segment import Segment


@dataclass
class AdapterResult:
    adapters: list[Adapter]  # finished in this call (or since the last take)
    records: list[VectorRecord]
    source: int
    target: int
    radius: float
    residual_norm: float
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    # Each adapter's change of the source block's output averaged over the target positions and
    # prompts: [d] each. Not what steers (that depends on the token), but a vector to compare it by.
    vectors: list[Tensor] = field(default_factory=list)


def initial_factors(seed: int, index: int, d_ff: int, width: int, rank: int) -> tuple[Tensor, Tensor]:
    """The random start of adapter `index`: the same for a run and for its resumption."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return random_factors(gen, d_ff, rank), random_factors(gen, width, rank)


def default_radius(residual_norm: float, activation_norm: float, rank: int) -> float:
    """R at which the r columns of an adapter, each aligned with a typical activation, together move
    the residual stream about as far as a default-norm vector (RADIUS_FRACTION of the residual
    norm). Orthogonal columns' changes add in quadrature, hence √r: with one column's worth of R
    each, rank-8 adapters trained on the embedded model moved it 1.5-2.6x as far as a default
    MELBO vector and wrote gibberish, and stayed fluent from a quarter to half of that R."""
    return RADIUS_FRACTION * residual_norm / (max(activation_norm, 1e-12) * math.sqrt(rank))


def _tangent(grad: Tensor, value: Tensor) -> Tensor:
    """Each column's gradient without its component along the (unit) column: [..., n, r]."""
    return grad - (grad * value).sum(dim=-2, keepdim=True) * value


class AdapterTrainer:
    """Trains a run's adapters one optimizer step (of a batch) per `step()`; `take()` hands over
    the finished ones."""

    def __init__(self, lm: LoadedModel, spec: AdapterSpec, *, first: int = 0) -> None:
        """`first`: adapters stored earlier by the same run (training resumes at that index)."""
        self.began = time.perf_counter()
        self.lm, self.spec = lm, spec
        self.source, self.target = spec.span(lm.info)
        self.device = next(lm.model.parameters()).device
        projection = mlp_out(lm.model, self.source)
        self.batch, mask = encode_targets(
            lm.tokenizer, spec.prompts, spec.positions, lm.info.context_length, self.device
        )
        self.mask = mask  # [P, T]
        self.objective = Objective(
            mask, spec.p, spec.q if spec.q is not None else spec.p, spec.loss, spec.normalize
        )
        self.segment = Segment(lm.model, self.batch, self.source, self.target, input_of=projection)
        assert self.segment.kept_input is not None
        self.activations = self.segment.kept_input.float()  # [P, T, d_ff]
        self.d_ff, self.width = int(self.activations.shape[-1]), lm.info.width
        self.residual_norm = median_norm(self.segment.h_source, mask)
        activation_norm = median_norm(self.activations, mask)
        self.radius = (
            spec.radius
            if spec.radius is not None
            else default_radius(self.residual_norm, activation_norm, spec.rank)
        )
        self.budget = spec.steps if spec.steps is not None else FAST_STEPS
        self.first = first
        self.total = max(0, spec.n_vectors - first)
        self.adapters: list[Adapter] = []
        self.changes: list[Tensor] = []  # each adapter's mean change (AdapterResult.vectors)
        self.records: list[VectorRecord] = []
        self.taken = 0
        self.early_stops = 0
        self.finished_steps = 0  # steps the finished batches took (an ETA's measure of a batch)
        self._batch: _Batch | None = None

    @property
    def finished(self) -> bool:
        return len(self.adapters) >= self.total

    def progress(self) -> Progress:
        b = self._batch
        return Progress(
            self.total,
            len(self.adapters),
            0 if b is None else b.k,
            0 if b is None else b.steps,
            self.budget,
            self.spec.batch_size,
            self.early_stops,
            self.finished_steps,
        )

    def deltas(self, down: Tensor, up: Tensor) -> Tensor:
        """The change at the source block's output, per adapter, prompt and position: [K, P, T, d]."""
        a = self.activations.to(down.dtype)
        return self.radius * torch.einsum("kptr,kdr->kptd", torch.einsum("ptf,kfr->kptr", a, down), up)

    def mean_changes(self, down: Tensor, up: Tensor) -> Tensor:
        """`deltas` averaged over the target positions of every prompt: [K, d]."""
        mask = self.mask.to(self.activations.device)
        return self.deltas(down, up)[:, mask].mean(dim=1)

    def step(self) -> list[VectorRecord]:
        if self.finished:
            return []
        if self._batch is None:
            self._batch = self._start()
        b = self._batch
        converged = False
        if b.steps < self.budget:
            values = self._step(b)
            for j, value in enumerate(values.tolist()):
                b.curves[j].append(value)
            gained = values > b.best + FAST_TOL * b.best.abs().clamp_min(1e-12)
            if bool(gained.any()):
                b.last_gain = b.steps - 1
            b.best = torch.maximum(b.best, values)
            converged = b.steps - 1 - b.last_gain >= FAST_PATIENCE
        if b.steps < self.budget and not converged:
            return []
        self.early_stops += int(converged and b.steps < self.budget)
        self.finished_steps += b.steps
        self._batch = None
        return self._finish(b)

    def take(self) -> AdapterResult:
        start, self.taken = self.taken, len(self.adapters)
        return self._result(self.adapters[start:], self.records[start:], self.changes[start:])

    def result(self) -> AdapterResult:
        return self._result(self.adapters, self.records, self.changes)

    # internals

    def _result(
        self, adapters: list[Adapter], records: list[VectorRecord], changes: list[Tensor]
    ) -> AdapterResult:
        return AdapterResult(
            adapters=list(adapters),
            records=list(records),
            source=self.source,
            target=self.target,
            radius=self.radius,
            residual_norm=self.residual_norm,
            seconds=time.perf_counter() - self.began,
            settings=self.spec.to_dict(),
            vectors=list(changes),
        )

    def _start(self) -> _Batch:
        index = self.first + len(self.adapters)
        k = min(self.spec.batch_size, self.total - len(self.adapters))
        starts = [
            initial_factors(self.spec.seed, index + j, self.d_ff, self.width, self.spec.rank)
            for j in range(k)
        ]
        down = torch.stack([a for a, _ in starts]).to(self.device).requires_grad_(True)
        up = torch.stack([b for _, b in starts]).to(self.device).requires_grad_(True)
        lr_down = self.spec.lr if self.spec.lr is not None else FAST_ANGLE / math.sqrt(self.d_ff)
        lr_up = self.spec.lr if self.spec.lr is not None else FAST_ANGLE / math.sqrt(self.width)
        optimizer = torch.optim.Adam(
            [{"params": [down], "lr": lr_down}, {"params": [up], "lr": lr_up}], betas=(0.9, 0.98)
        )
        steps = max(self.budget, 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda t: FAST_FINAL_LR + (1 - FAST_FINAL_LR) * 0.5 * (1 + math.cos(math.pi * t / steps)),
        )
        start = torch.cat(
            [
                torch.stack([a.reshape(-1) for a, _ in starts]),
                torch.stack([b.reshape(-1) for _, b in starts]),
            ],
            dim=1,
        )
        return _Batch(index, k, down, up, optimizer, schedule, start)

    def _step(self, b: _Batch) -> Tensor:
        seg = self.segment
        values = self.objective(seg.run(self.deltas(b.down, b.up)), seg.z0)  # [K]
        b.optimizer.zero_grad()
        (-values.sum()).backward()
        with torch.no_grad():
            for param in (b.down, b.up):
                assert param.grad is not None
                param.grad = _tangent(param.grad, param)
        b.optimizer.step()
        b.schedule.step()
        with torch.no_grad():
            b.down.copy_(F.normalize(b.down, dim=-2))
            b.up.copy_(F.normalize(b.up, dim=-2))
        return values.detach().cpu()

    def _finish(self, b: _Batch) -> list[VectorRecord]:
        down, up = b.down.detach().float(), b.up.detach().float()
        with torch.no_grad():
            z = self.segment.run(self.deltas(down, up))
            objectives = self.objective(z, self.segment.z0).cpu()
            shares = self.objective.top_position_share(z, self.segment.z0).cpu()
            changes = self.mean_changes(down, up).cpu()
        final = torch.cat([down.reshape(b.k, -1), up.reshape(b.k, -1)], dim=1).cpu()
        cosines = F.cosine_similarity(final, b.start, dim=1)
        records = []
        for j in range(b.k):
            adapter = Adapter(self.source, down[j].cpu(), up[j].cpu(), self.radius)
            record = VectorRecord(
                index=b.first + j,
                objective=float(objectives[j]),
                curve=b.curves[j],
                steps=len(b.curves[j]),
                start_cosine=float(cosines[j]),
                top_position_share=float(shares[j]),
            )
            self.adapters.append(adapter)
            self.changes.append(changes[j])
            self.records.append(record)
            records.append(record)
        return records


class _Batch:
    def __init__(
        self,
        first: int,
        k: int,
        down: Tensor,
        up: Tensor,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        start: Tensor,
    ) -> None:
        self.first, self.k, self.down, self.up = first, k, down, up
        self.optimizer, self.schedule, self.start = optimizer, schedule, start
        self.curves: list[list[float]] = [[] for _ in range(k)]
        self.best = torch.full((k,), -math.inf)
        self.last_gain = 0

    @property
    def steps(self) -> int:
        return len(self.curves[0])


def train_adapters(lm: LoadedModel, spec: AdapterSpec) -> AdapterResult:
    trainer = AdapterTrainer(lm, spec)
    while not trainer.finished:
        trainer.step()
    return trainer.result()


@torch.no_grad()
def adapter_kl(lm: LoadedModel, batch: PromptBatch, adapters: list[Adapter]) -> Tensor:
    """KL(P_adapted ‖ P_unsteered) of the next token at the prompt end, averaged over prompts: [K]."""
    model = lm.model
    device = next(model.parameters()).device
    batch = batch.to(device)
    inputs = batch.model_inputs()
    base = F.log_softmax(model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float(), dim=-1)
    out = []
    for adapter in adapters:
        rows = stack_rows([adapter] * batch.size, adapter.block)
        if rows is None:
            out.append(torch.zeros(()))
            continue
        with adapting(model, {adapter.block: rows}):
            steered = F.log_softmax(
                model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float(), dim=-1
            )
        prob = steered.exp()
        out.append(torch.where(prob > 0, prob * (steered - base), 0.0).sum(dim=-1).mean().cpu())
    return torch.stack(out) if out else torch.zeros(0)
