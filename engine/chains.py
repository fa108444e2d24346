"""MELBO-ortho (ALGORITHMS.md §2): chains of steering vectors orthogonal to θ₀ and to each other
that reproduce θ₀'s downstream effect.

    z(θ) = mean over a prompt's real positions of hidden_states[target], θ added at the source
    loss(θ) = Σ_prompts ‖z(θ) − z(θ₀)‖₂

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
from engine.metrics import next_token_kl
from engine.models import LoadedModel
from engine.orthogonal import Basis, max_abs_cos, orthogonalize
from engine.prompts import PromptBatch, encode_prompts
from engine.segment import Segment
from engine.specs import ChainSpec
from engine.steering import steer

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


class ChainLoss:
    """The chain loss on a fixed prompt batch, through the whole model or the cached segment."""

    def __init__(self, lm: LoadedModel, batch: PromptBatch, source: int, target: int, fast: bool) -> None:
        self.model, self.batch, self.source, self.target = lm.model, batch, source, target
        real = batch.attention_mask.float()  # [P, T]
        self.weights = (real / real.sum(dim=1, keepdim=True))[:, :, None]  # [P, T, 1] mean over real
        self.segment = Segment(lm.model, batch, source, target) if fast else None
        self.goal = torch.zeros(batch.size, lm.info.width, device=real.device)  # [P, d] z(θ₀): aim()

    def z(self, deltas: Tensor) -> Tensor:
        """z for each row of deltas [K, d]: [K, P, d] float32."""
        if self.segment is not None:
            hidden = self.segment.run(deltas).float()  # [K*P, T, d]
        else:
            parts = []
            for delta in deltas:  # the reference runs the whole model once per vector
                with steer(self.model, self.source, delta):
                    out = self.model(**self.batch.model_inputs(), output_hidden_states=True, use_cache=False)
                parts.append(out.hidden_states[self.target].float())
            hidden = torch.cat(parts)
        k = deltas.shape[0]
        return (hidden * self.weights.repeat(k, 1, 1)).sum(dim=1).view(k, self.batch.size, -1)

    def aim(self, theta0: Tensor) -> float:
        """Fix the goal z(θ₀); returns the loss of θ = 0."""
        with torch.no_grad():
            self.goal = self.z(theta0[None])[0]
            return float(self(torch.zeros_like(theta0)[None])[0])

    def __call__(self, deltas: Tensor) -> Tensor:
        """Loss of each row of deltas [K, d]: [K]."""
        return (self.z(deltas) - self.goal[None]).norm(dim=-1).sum(dim=-1)

    def measure(self, vectors: Tensor) -> tuple[Tensor, Tensor]:
        """Final loss and next-token KL of finished vectors [K, d]: ([K], [K]) on the CPU."""
        with torch.no_grad():
            values = self(vectors.to(self.goal.device)).cpu()
        return values, next_token_kl(self.model, self.batch, self.source, vectors)


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
    """Ends a batch from inside the optimizer's closure."""

    def __init__(self, cancelled: bool) -> None:
        self.cancelled = cancelled


@dataclass
class _Best:
    """The best point a batch has seen: L-BFGS may stop (or be stopped) mid line search."""

    phi: Tensor  # [k, d]
    total: float = math.inf
    gained_at: int = 0  # evaluation of the last real gain: plateau_gain below `mark`
    mark: float = math.inf  # the total at that evaluation
    evals: int = 0


class _Trainer:
    """Trains the next vectors of one chain: its loss, the span to avoid, budget and callbacks."""

    def __init__(
        self,
        loss: ChainLoss,
        basis: Basis,
        theta0: Tensor,
        spec: ChainSpec,
        config: ChainConfig,
        on_progress: ProgressFn | None,
        should_stop: StopFn | None,
    ) -> None:
        self.loss, self.basis, self.theta0, self.config = loss, basis, theta0, config
        self.on_progress, self.should_stop, self.seed = on_progress, should_stop, spec.seed
        fast = spec.mode == "fast"
        self.lr = spec.lr if spec.lr is not None else (config.fast_lr if fast else config.reference_lr)
        self.steps = spec.steps if spec.steps is not None else config.reference_steps
        if fast and spec.steps is None:
            batch = min(spec.batch_size, spec.n_vectors)
            self.steps = config.fast_steps + config.fast_steps_per_vector * batch
        self.threshold = 0.0  # set once the loss at 0 is known

    def step_hooks(self, index: int, step: int, value: float) -> None:
        if self.on_progress is not None:
            self.on_progress(index, step, value)

    def cancelled(self) -> bool:
        return self.should_stop is not None and self.should_stop()

    def reference(self, index: int) -> tuple[Tensor, int] | None:
        """The published procedure for one vector: ([1, d], steps), None if cancelled."""
        theta = nn.Parameter(self.theta0.clone())  # [d]: the first projection removes all of it
        optimizer = torch.optim.Adam([theta], lr=self.lr)
        for step in range(self.steps):
            if self.cancelled():
                return None
            value = self.loss(theta[None])[0]
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            with torch.no_grad():
                theta.copy_(self.basis.project(theta[None])[0])
            self.step_hooks(index, step, float(value.detach()))
        return theta.detach()[None], self.steps

    def fast(self, first: int, k: int) -> tuple[Tensor, int] | None:
        """Vectors first..first+k-1 together: ([k, d], loss evaluations), None if cancelled."""
        cfg, scale = self.config, float(self.theta0.norm())
        width, device = self.theta0.shape[0], self.theta0.device
        start = torch.stack([initial_vector(self.seed, first + j, width) for j in range(k)]).to(device)
        # θ = scale * φ: the problem no longer depends on ‖θ₀‖, and L-BFGS's first trial step
        # (1/‖g‖₁ in φ) moves θ by ‖θ₀‖·‖g‖₂/‖g‖₁, between ‖θ₀‖/√d and ‖θ₀‖.
        phi = nn.Parameter(orthogonalize(start / start.norm(dim=1, keepdim=True), self.basis))  # [k, d]
        optimizer = torch.optim.LBFGS(
            [phi], lr=self.lr, max_iter=self.steps, max_eval=self.steps, history_size=cfg.history,
            tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe",
        )  # fmt: skip
        best = _Best(phi.detach().clone())

        def closure() -> Tensor:
            if self.cancelled():
                raise _Halt(cancelled=True)
            optimizer.zero_grad()
            values = self.loss(orthogonalize(phi * scale, self.basis))  # [k]
            total = values.sum()
            total.backward()
            best.evals += 1
            for j, value in enumerate(values.tolist()):
                self.step_hooks(first + j, best.evals - 1, value)
            value = float(total.detach())
            if value < best.total:
                best.total, best.phi = value, phi.detach().clone()
            if value < best.mark * (1 - cfg.plateau_gain):  # many small gains add up to a real one
                best.mark, best.gained_at = value, best.evals
            done = bool((values < self.threshold).all()) or best.evals >= self.steps
            if done or best.evals - best.gained_at >= cfg.plateau_steps:
                raise _Halt(cancelled=False)
            return total

        try:
            optimizer.step(closure)
        except _Halt as halt:
            if halt.cancelled:
                return None
        with torch.no_grad():
            return orthogonalize(best.phi * scale, self.basis), best.evals


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

    `previous` [M, d]: what an earlier (killed) run of this chain found; kept, re-measured, and
    training goes on at index M with the starts the uninterrupted run would have used. A cancelled
    run returns the vectors finished so far (fast mode finishes whole batches).
    """
    fast = spec.mode == "fast"
    source, target = spec.span(lm.info)
    theta0, prev = check_inputs(theta0, previous, lm.info.width)
    device = next(lm.model.parameters()).device
    loss = ChainLoss(lm, encode_prompts(lm.tokenizer, spec.prompts).to(device), source, target, fast)
    loss_at_zero = loss.aim(theta0.to(device))
    theta0_norm = float(theta0.norm())
    basis = Basis(lm.info.width, device)
    basis.add(torch.cat([theta0[None], prev]))
    trainer = _Trainer(loss, basis, theta0.to(device), spec, config, on_progress, should_stop)
    trainer.threshold = (
        spec.loss_threshold if spec.loss_threshold is not None else config.threshold * loss_at_zero
    )
    records: list[ChainVector] = []
    chain = [prev]

    def verdict() -> StopReason:  # only a chain short of its length can have stopped early
        done = len(records) >= spec.n_vectors
        return "completed" if done else _verdict(records, theta0_norm, loss_at_zero, config)

    if prev.shape[0]:
        values, kl = loss.measure(prev)
        records = [
            ChainVector(i, float(v.norm()), float(values[i]), float(kl[i]), 0, True)
            for i, v in enumerate(prev)
        ]
    reason = verdict()
    while reason == "completed" and len(records) < spec.n_vectors:
        first = len(records)
        k = min(spec.batch_size, spec.n_vectors - first) if fast else 1
        out = trainer.fast(first, k) if fast else trainer.reference(first)
        if out is None:
            reason = "cancelled"
            break
        new = out[0].float().cpu()
        basis.add(new)
        values, kl = loss.measure(new)
        for j in range(k):
            records.append(
                ChainVector(first + j, float(new[j].norm()), float(values[j]), float(kl[j]), out[1])
            )
            chain.append(new[j : j + 1])
            reason = verdict()
            if reason != "completed":
                break  # the rest of this batch lies past the end of the chain
    settings = {
        **spec.to_dict(),
        "lr": trainer.lr,
        "steps": trainer.steps,
        "loss_threshold": trainer.threshold,
    }
    theta0_kl = float(loss.measure(theta0[None])[1][0])
    return ChainResult(
        torch.cat(chain), records, reason, theta0_norm, loss_at_zero, theta0_kl, source, target, settings
    )
