"""MELBO-ortho (docs/methods.md): chains of steering vectors orthogonal to θ₀ and to each other
that reproduce θ₀'s downstream effect (the loss they minimize is in `engine/methods/chain_loss.py`).

`reference` is the published procedure: the whole model every step, one vector at a time,
Adam(lr 1e-2) from a copy of θ₀, 1000 steps, θ projected off {θ₀, θ₁..θ_{k-1}} after each step.
`fast` runs only the blocks between source and target on cached activations and trains a batch of
vectors together with L-BFGS on θ/‖θ₀‖ (so the first step is matched to ‖θ₀‖), through an ordered
Gram-Schmidt that keeps every vector orthogonal at every evaluation; a batch stops once its loss
is small or has stopped improving. Projections run in float64: every pair in the chain (θ₀
included) ends with |cos| far below 1e-6.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from engine.errors import EngineError
from engine.methods.chain_loss import ChainLoss
from engine.models import LoadedModel
from engine.progress import Progress
from engine.prompts import encode_prompts
from engine.specs import ChainSpec
from engine.steer.orthogonal import Basis, max_abs_cos, orthogonalize

ProgressFn = Callable[[int, int, float], None]  # (vector index in the chain, step, loss)
StopFn = Callable[[], bool]  # polled before every step; True cancels
StopReason = Literal["completed", "collapsed", "loss_high", "cancelled"]


@dataclass(frozen=True)
class ChainConfig:
    """Knobs outside the job spec; fast-mode defaults were tuned on the embedded model."""

    reference_steps: int = 1000  # the published step count
    reference_lr: float = 1e-2  # the published Adam learning rate
    # Fast mode's cap on loss evaluations per batch when the spec sets none: fast_steps plus
    # fast_steps_per_vector per vector, as one L-BFGS over a bigger batch needs more evaluations.
    fast_steps: int = 100
    fast_steps_per_vector: int = 25
    fast_lr: float = 1.0  # L-BFGS step multiplier: 1 takes the quasi-Newton step as it is
    history: int = 20  # L-BFGS memory
    threshold: float = 0.02  # fast: a batch is done once every loss < this share of the loss at 0 ...
    plateau_steps: int = 25  # ... or when its total gained < plateau_gain over this many evaluations
    plateau_gain: float = 0.01
    collapse: float = 0.05  # a vector with norm < collapse * ‖θ₀‖ has collapsed ...
    high_loss: float = 0.5  # ... one with loss > high_loss * (loss at 0) does not reproduce θ₀
    patience: int = 2  # the chain stops after this many such vectors in a row


@dataclass(frozen=True)
class ChainVector:
    index: int  # position in the chain: 0 is the first vector after θ₀
    norm: float
    loss: float  # final Σ_prompts ‖z(θ) − z(θ₀)‖
    kl: float  # next-token KL(P_k ‖ P_0) at the last prompt position, mean over prompts
    steps: int  # loss evaluations (forward + backward) spent on its batch; 0 if given as `previous`
    resumed: bool = False  # handed in as `previous`: re-measured, not trained here


@dataclass
class ChainResult:
    vectors: Tensor  # [N, d] float32: the chain after θ₀, `previous` included
    records: list[ChainVector]  # one per row of `vectors`
    stop_reason: StopReason
    theta0_norm: float
    loss_at_zero: float  # loss of θ = 0: the scale losses are judged on
    theta0_kl: float  # θ₀'s own next-token KL: what the chain's KLs compare with
    source: int
    target: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def cancelled(self) -> bool:
        return self.stop_reason == "cancelled"

    def to_dict(self) -> dict[str, Any]:
        """Everything but the vectors, JSON-able."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("vectors", "records")}
        return {**out, "records": [asdict(r) for r in self.records], "cancelled": self.cancelled}


def initial_vector(seed: int, index: int, width: int) -> Tensor:
    """The random start of chain vector `index`, the same in a run and in its resumption: [d]."""
    # Mixed so a θ₀ drawn as randn with a small seed is not one of the starts (it would project to 0).
    gen = torch.Generator().manual_seed((seed * 1_000_003 + index) * 2_654_435_761 % 2**61 + 1_234_567)
    return torch.randn(width, generator=gen, dtype=torch.float32)


def check_inputs(theta0: Tensor, previous: Tensor | None, width: int) -> tuple[Tensor, Tensor]:
    """θ₀ [d] and the earlier chain [M, d] as float32 CPU tensors, or a readable error."""
    if theta0.dim() != 1 or theta0.shape[0] != width:
        raise EngineError(f"theta0 has shape {tuple(theta0.shape)}, the model needs ({width},)")
    if not bool(torch.isfinite(theta0).all()):
        raise EngineError("theta0 contains NaN or infinite values")
    if float(theta0.double().norm()) == 0.0:
        raise EngineError("theta0 is the zero vector: a chain needs a vector whose effect it reproduces")
    prev = torch.zeros(0, width) if previous is None else previous.detach().float().cpu()
    if prev.dim() != 2 or prev.shape[1] != width:
        raise EngineError(f"previous chain vectors must have shape [M, {width}], got {tuple(prev.shape)}")
    if not bool(torch.isfinite(prev).all()):
        raise EngineError("previous chain vectors contain NaN or infinite values")
    worst = max_abs_cos(torch.cat([theta0.detach().float().cpu()[None], prev]))
    if worst > 1e-5:
        raise EngineError(
            f"previous vectors are not an orthogonal chain from this theta0 (|cos| up to {worst:.2g})"
        )
    return theta0.detach().float().cpu(), prev


class _Halt(Exception):
    """Ends a fast batch from inside the optimizer's closure (its loss is small, flat or out of budget)."""


@dataclass
class _Best:
    """The best point a batch has seen: L-BFGS may stop mid line search."""

    phi: Tensor  # [k, d]
    total: float = math.inf
    gained_at: int = 0  # evaluation of the last real gain: plateau_gain below `mark`
    mark: float = math.inf  # the total at that evaluation
    evals: int = 0


class _Batch:
    """The vectors being trained now: one (reference) or a batch (fast), with their optimizer."""

    def __init__(self, first: int, k: int, param: nn.Parameter, optimizer: torch.optim.Optimizer) -> None:
        self.first, self.k, self.param, self.optimizer = first, k, param, optimizer
        self.best = _Best(param.detach().clone())
        self.halted = False
        # Recent evaluations (point, loss, gradient): L-BFGS re-evaluates the point its line search
        # ended on at the start of every iteration, and this answers that from memory.
        self.seen: list[tuple[Tensor, Tensor, Tensor]] = []


class ChainTrainer:
    """Extends a chain from θ₀ one unit at a time: an Adam step of the vector in training
    (reference) or one L-BFGS iteration of the batch in training (fast).

    `previous` [M, d]: what an earlier (killed) run of this chain found; kept, re-measured, and
    training goes on at index M with the starts the uninterrupted run would have used.

        trainer = ChainTrainer(lm, spec, theta0)
        while not trainer.finished:
            trainer.step()
    """

    def __init__(
        self,
        lm: LoadedModel,
        spec: ChainSpec,
        theta0: Tensor,
        *,
        previous: Tensor | None = None,
        on_progress: ProgressFn | None = None,
        config: ChainConfig = ChainConfig(),
    ) -> None:
        self.spec, self.config, self.on_progress = spec, config, on_progress
        self.fast = spec.mode == "fast"
        self.source, self.target = spec.span(lm.info)
        theta0, prev = check_inputs(theta0, previous, lm.info.width)
        self.device = next(lm.model.parameters()).device
        batch = encode_prompts(lm.tokenizer, spec.prompts).to(self.device)
        self.loss = ChainLoss(lm, batch, self.source, self.target, self.fast)
        self.loss_at_zero = self.loss.aim(theta0.to(self.device))
        self.theta0, self.theta0_norm = theta0.to(self.device), float(theta0.norm())
        self.theta0_kl = float(self.loss.measure(theta0[None])[1][0])
        self.basis = Basis(lm.info.width, self.device)
        self.basis.add(torch.cat([theta0[None], prev]))
        self.lr = spec.lr if spec.lr is not None else (config.fast_lr if self.fast else config.reference_lr)
        self.steps = spec.steps if spec.steps is not None else config.reference_steps
        if self.fast and spec.steps is None:
            self.steps = config.fast_steps + config.fast_steps_per_vector * min(
                spec.batch_size, spec.n_vectors
            )
        self.threshold = (
            spec.loss_threshold if spec.loss_threshold is not None else config.threshold * self.loss_at_zero
        )
        self.records: list[ChainVector] = []
        self.chain = [prev]
        self.resumed = prev.shape[0]
        if self.resumed:
            values, kl = self.loss.measure(prev)
            self.records = [
                ChainVector(i, float(v.norm()), float(values[i]), float(kl[i]), 0, True)
                for i, v in enumerate(prev)
            ]
        self.reason: StopReason = self._verdict()
        self.batch: _Batch | None = None

    @property
    def finished(self) -> bool:
        return self.reason != "completed" or len(self.records) >= self.spec.n_vectors

    @property
    def vectors(self) -> Tensor:
        """The chain after θ₀ so far, `previous` included: [N, d] float32."""
        return torch.cat(self.chain)

    def progress(self) -> Progress:
        total = self.spec.n_vectors - self.resumed
        done = len(self.records) - self.resumed
        per_batch = self.spec.batch_size if self.fast else 1
        if self.batch is None:
            return Progress(total, done, 0, 0, self.steps, per_batch)
        return Progress(total, done, self.batch.k, self.batch.best.evals, self.steps, per_batch)

    def step(self) -> list[ChainVector]:
        """One unit of training; the records of the vectors it finished (often none)."""
        if self.finished:
            return []
        if self.batch is None:
            self.batch = self._start()
        trained = self._iterate(self.batch) if self.fast else self._adam_step(self.batch)
        if trained is None:
            return []
        first, spent, self.batch = self.batch.first, self.batch.best.evals, None
        new = trained.float().cpu()
        self.basis.add(new)
        values, kl = self.loss.measure(new)
        added = []
        for j in range(new.shape[0]):
            record = ChainVector(first + j, float(new[j].norm()), float(values[j]), float(kl[j]), spent)
            self.records.append(record)
            self.chain.append(new[j : j + 1])
            added.append(record)
            self.reason = self._verdict()
            if self.reason != "completed":
                break  # the rest of this batch lies past the end of the chain
        return added

    def result(self, *, cancelled: bool = False) -> ChainResult:
        settings = {
            **self.spec.to_dict(),
            "lr": self.lr,
            "steps": self.steps,
            "loss_threshold": self.threshold,
        }
        reason: StopReason = "cancelled" if cancelled else self.reason
        return ChainResult(
            self.vectors,
            list(self.records),
            reason,
            self.theta0_norm,
            self.loss_at_zero,
            self.theta0_kl,
            self.source,
            self.target,
            settings,
        )

    # internals

    def _verdict(self) -> StopReason:
        """Why the chain must stop now ("completed": it need not); only a short chain stops early."""
        if len(self.records) >= self.spec.n_vectors:
            return "completed"
        return _verdict(self.records, self.theta0_norm, self.loss_at_zero, self.config)

    def _start(self) -> _Batch:
        first = len(self.records)
        if not self.fast:
            theta = nn.Parameter(self.theta0.clone()[None])  # [1, d]: the first projection removes all of θ₀
            return _Batch(first, 1, theta, torch.optim.Adam([theta], lr=self.lr))
        k = min(self.spec.batch_size, self.spec.n_vectors - first)
        width = self.theta0.shape[0]
        start = torch.stack([initial_vector(self.spec.seed, first + j, width) for j in range(k)]).to(
            self.device
        )
        # θ = ‖θ₀‖·φ: the problem no longer depends on ‖θ₀‖, and L-BFGS's first trial step
        # (1/‖g‖₁ in φ) moves θ by ‖θ₀‖·‖g‖₂/‖g‖₁, between ‖θ₀‖/√d and ‖θ₀‖.
        phi = nn.Parameter(orthogonalize(start / start.norm(dim=1, keepdim=True), self.basis))  # [k, d]
        optimizer = torch.optim.LBFGS(
            [phi], lr=self.lr, max_iter=1, max_eval=self.steps, history_size=self.config.history,
            tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe",
        )  # fmt: skip
        return _Batch(first, k, phi, optimizer)

    def _adam_step(self, batch: _Batch) -> Tensor | None:
        """The published procedure: one Adam step, then θ projected off the chain; the vector when done."""
        theta = batch.param
        value = self.loss(theta)[0]
        batch.optimizer.zero_grad()
        value.backward()
        batch.optimizer.step()
        with torch.no_grad():
            theta.copy_(self.basis.project(theta))
        batch.best.evals += 1
        self._report(batch.first, batch.best.evals - 1, float(value.detach()))
        return theta.detach() if batch.best.evals >= self.steps else None

    def _iterate(self, batch: _Batch) -> Tensor | None:
        """One L-BFGS iteration of the batch (its line search included); the vectors when done."""
        cfg, scale, phi, best = self.config, self.theta0_norm, batch.param, batch.best

        def closure() -> Tensor:
            for point, total, grad in batch.seen:
                if torch.equal(point, phi):
                    phi.grad = grad.clone()
                    return total
            batch.optimizer.zero_grad()
            values = self.loss(orthogonalize(phi * scale, self.basis))  # [k]
            total = values.sum()
            total.backward()
            assert phi.grad is not None
            batch.seen = [*batch.seen[-31:], (phi.detach().clone(), total.detach(), phi.grad.clone())]
            best.evals += 1
            for j, value in enumerate(values.tolist()):
                self._report(batch.first + j, best.evals - 1, value)
            value = float(total.detach())
            if value < best.total:
                best.total, best.phi = value, phi.detach().clone()
            if value < best.mark * (1 - cfg.plateau_gain):  # many small gains add up to a real one
                best.mark, best.gained_at = value, best.evals
            done = bool((values < self.threshold).all()) or best.evals >= self.steps
            if done or best.evals - best.gained_at >= cfg.plateau_steps:
                raise _Halt
            return total

        evals = best.evals
        try:
            batch.optimizer.step(closure)  # type: ignore[arg-type]  # LBFGS takes a tensor loss
        except _Halt:
            batch.halted = True
        # An iteration that evaluated nothing new has nowhere left to go (a zero gradient, or no
        # descent direction): the batch is as good as it gets.
        if batch.halted or best.evals == evals:
            with torch.no_grad():
                return orthogonalize(best.phi * scale, self.basis)
        return None

    def _report(self, index: int, step: int, value: float) -> None:
        if self.on_progress is not None:
            self.on_progress(index, step, value)


def _verdict(
    records: list[ChainVector], theta0_norm: float, loss_at_zero: float, cfg: ChainConfig
) -> StopReason:
    """Why the chain must stop after these records ("completed": it need not)."""
    tail = records[-cfg.patience :] if cfg.patience > 0 else []
    if len(tail) < cfg.patience or not tail:
        return "completed"
    collapsed = [r.norm < cfg.collapse * theta0_norm for r in tail]
    high = [r.loss > cfg.high_loss * loss_at_zero for r in tail]
    if not all(c or h for c, h in zip(collapsed, high, strict=True)):
        return "completed"
    return "collapsed" if collapsed[-1] else "loss_high"


def train_chain(
    lm: LoadedModel,
    spec: ChainSpec,
    theta0: Tensor,
    *,
    previous: Tensor | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    config: ChainConfig = ChainConfig(),
) -> ChainResult:
    """Extend the chain from θ₀ [d] to spec.n_vectors vectors, or until it stops by itself.

    `previous` [M, d]: an earlier (killed) run's vectors, kept; training resumes at index M. A
    cancelled run returns the vectors finished so far (fast mode finishes whole batches).
    """
    trainer = ChainTrainer(lm, spec, theta0, previous=previous, on_progress=on_progress, config=config)
    while not trainer.finished:
        if should_stop is not None and should_stop():
            return trainer.result(cancelled=True)
        trainer.step()
    return trainer.result()
