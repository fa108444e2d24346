"""MELBO: unsupervised steering vectors of norm R that maximally change a later layer.

Two modes on one objective (engine/objective.py):
- `reference` follows the published procedure: the whole model every step, vectors one after
  another, AdamW with amsgrad, tangent projection of the gradient and retraction to the sphere.
- `fast` caches activations up to the source block, runs only the blocks up to the target (no LM
  head), trains a batch of vectors together with an ordered orthogonalization every step, uses a
  step size matched to R and stops once the objective has converged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.errors import EngineError
from engine.metrics import median_norm
from engine.models import LoadedModel
from engine.objective import Objective, orthonormal_basis, project_out, retract
from engine.prompts import PromptBatch, encode_prompts, target_mask
from engine.segment import Segment
from engine.specs import MelboSpec
from engine.steering import steer

ProgressFn = Callable[[int, int, float], None]  # (vector index, step, objective)
StopFn = Callable[[], bool]

DEFAULT_STEPS = 300  # the published step count (reference mode)
REFERENCE_LR = 1e-3  # published AdamW learning rate
FAST_STEPS = 100  # fast mode's step budget; its step size decays over it (60 is faster but less fluent)
FAST_ANGLE = 0.08  # fast mode: Adam lr = FAST_ANGLE * R / sqrt(d), about that many radians a step
FAST_FINAL_LR = 0.1  # the step size decays (cosine) to this share of its start by the last step
FAST_TOL = 5e-3  # fast mode stops when no vector gained this share of its objective ...
FAST_PATIENCE = 10  # ... over this many steps
RADIUS_FRACTION = 0.08  # default R: this share of the median residual norm at the source


@dataclass
class VectorRecord:
    index: int  # position in the run (counts previously stored vectors too)
    objective: float  # final objective (computed the same way in both modes)
    curve: list[float]  # objective at every step
    steps: int  # optimizer steps taken
    start_cosine: float  # cosine with the random start: near 1 means the optimizer barely moved
    top_position_share: float  # share of the objective on the largest position (gaming flag)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class MelboResult:
    vectors: Tensor  # [N, d] float32, the vectors finished in this call
    records: list[VectorRecord]
    source: int
    target: int
    radius: float
    residual_norm: float  # median norm of the source block's output on the target positions
    cancelled: bool = False
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def objectives(self) -> list[float]:
        return [r.objective for r in self.records]


def step_budget(spec: MelboSpec) -> int:
    """Steps per vector the spec allows (fast mode may stop sooner); 0 for the random baseline."""
    if spec.method == "random":
        return 0
    if spec.steps is not None:
        return spec.steps
    return FAST_STEPS if spec.mode == "fast" else DEFAULT_STEPS


def initial_vector(seed: int, index: int, width: int) -> Tensor:
    """The random start of vector `index`: the same for a run and for its resumption."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randn(width, generator=gen, dtype=torch.float32)


class _Problem:
    """Everything both modes share: prompts, target positions, objective, cached segment."""

    def __init__(self, lm: LoadedModel, spec: MelboSpec) -> None:
        self.lm, self.spec = lm, spec
        self.source, self.target = spec.span(lm.info)
        device = next(lm.model.parameters()).device
        self.batch: PromptBatch = encode_prompts(lm.tokenizer, spec.prompts).to(device)
        if self.batch.input_ids.shape[1] > lm.info.context_length:
            raise EngineError(
                f"a prompt is {self.batch.input_ids.shape[1]} tokens long; "
                f"the model's context is {lm.info.context_length}"
            )
        mask = target_mask(self.batch, spec.positions)
        if not bool(mask.any(dim=1).all()):
            raise EngineError(f"positions {spec.positions!r} select no token in some prompt")
        q = spec.q if spec.q is not None else spec.p
        self.objective = Objective(mask, spec.p, q, spec.loss, spec.normalize)
        self.segment = Segment(lm.model, self.batch, self.source, self.target)
        self.residual_norm = median_norm(self.segment.h_source, mask)
        self.radius = spec.radius if spec.radius is not None else RADIUS_FRACTION * self.residual_norm
        self.width = lm.info.width
        self.device = device

    def final(self, vectors: Tensor) -> tuple[Tensor, Tensor]:
        """Objective and top-position share of finished vectors [K, d], without gradients."""
        with torch.no_grad():
            z = self.segment.run(vectors.to(self.device))
            z0 = self.segment.z0
            return self.objective(z, z0).cpu(), self.objective.top_position_share(z, z0).cpu()


def _with(fixed: Tensor, earlier: list[Tensor]) -> Tensor:
    """Stored vectors [F, d] followed by those finished in this call."""
    return torch.cat([fixed, torch.stack(earlier)]) if earlier else fixed


def _start(problem: _Problem, index: int, fixed: Tensor, earlier: list[Tensor]) -> Tensor:
    spec = problem.spec
    raw = initial_vector(spec.seed, index, problem.width)[None]
    before = _with(fixed, earlier)
    return retract(raw, before if spec.orthogonal else before[:0], problem.radius, spec.orthogonal)[0]


def _reference(
    problem: _Problem,
    n: int,
    fixed: Tensor,
    first: int,
    on_progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> tuple[list[Tensor], list[Tensor], list[list[float]], bool]:
    """The published procedure, one vector after another, whole model every step."""
    spec, model = problem.spec, problem.lm.model
    steps = step_budget(spec)
    lr = spec.lr if spec.lr is not None else REFERENCE_LR
    radius, z0 = problem.radius, problem.segment.z0
    done: list[Tensor] = []
    starts: list[Tensor] = []
    curves: list[list[float]] = []
    for i in range(n):
        start = _start(problem, first + i, fixed, done)
        basis = orthonormal_basis(_with(fixed, done)) if spec.orthogonal else fixed[:0].double()
        theta = start.clone().to(problem.device).requires_grad_(True)
        optimizer = torch.optim.AdamW([theta], lr=lr, betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True)
        curve: list[float] = []
        for step in range(steps):
            if should_stop is not None and should_stop():
                return done, starts, curves, True
            with steer(model, problem.source, theta):
                out = model(**problem.batch.model_inputs(), output_hidden_states=True, use_cache=False)
            value = problem.objective(out.hidden_states[problem.target], z0)[0]
            optimizer.zero_grad()
            (-value).backward()
            with torch.no_grad():
                assert theta.grad is not None
                grad = project_out(theta.grad[None], basis.to(theta.device))[0]
                theta.grad = grad - (grad @ theta) * theta / radius**2  # tangent to the sphere
            optimizer.step()
            with torch.no_grad():
                theta.copy_(project_out(theta[None], basis.to(theta.device))[0])
                theta.mul_(radius / theta.norm())
            curve.append(float(value.detach()))
            if on_progress is not None:
                on_progress(first + i, step, curve[-1])
        done.append(theta.detach().cpu().float())
        starts.append(start)
        curves.append(curve)
    return done, starts, curves, False


def _fast(
    problem: _Problem,
    n: int,
    fixed: Tensor,
    first: int,
    on_progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> tuple[list[Tensor], list[Tensor], list[list[float]], bool]:
    """Batches of vectors on the cached segment, retracted in order each step, early stop."""
    spec, seg = problem.spec, problem.segment
    steps = step_budget(spec)
    radius = problem.radius
    lr = spec.lr if spec.lr is not None else FAST_ANGLE * radius / math.sqrt(problem.width)
    done: list[Tensor] = []
    starts: list[Tensor] = []
    curves: list[list[float]] = []
    for lo in range(0, n, spec.batch_size):
        k = min(spec.batch_size, n - lo)
        before = _with(fixed, done)
        if not spec.orthogonal:
            before = before[:0]
        init = retract(
            torch.stack([initial_vector(spec.seed, first + lo + j, problem.width) for j in range(k)]),
            before,
            radius,
            spec.orthogonal,
        )
        theta = init.clone().to(problem.device).requires_grad_(True)
        optimizer = torch.optim.Adam([theta], lr=lr, betas=(0.9, 0.98))
        # Large steps find the basin quickly; shrinking them lets every vector settle within budget.
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda t: FAST_FINAL_LR + (1 - FAST_FINAL_LR) * 0.5 * (1 + math.cos(math.pi * t / max(steps, 1))),
        )
        batch_curves: list[list[float]] = [[] for _ in range(k)]
        best = torch.full((k,), -math.inf)
        last_gain = 0
        for step in range(steps):
            if should_stop is not None and should_stop():
                return done, starts, curves, True
            values = problem.objective(seg.run(theta), seg.z0)  # [K]
            optimizer.zero_grad()
            (-values.sum()).backward()
            with torch.no_grad():
                grad = theta.grad
                assert grad is not None
                theta.grad = grad - (grad * theta).sum(-1, keepdim=True) * theta / radius**2
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                theta.copy_(retract(theta, before.to(problem.device), radius, spec.orthogonal))
            now = values.detach().cpu()
            for j in range(k):
                batch_curves[j].append(float(now[j]))
                if on_progress is not None:
                    on_progress(first + lo + j, step, float(now[j]))
            gained = now > best + FAST_TOL * best.abs().clamp_min(1e-12)
            if bool(gained.any()):
                last_gain = step
            best = torch.maximum(best, now)
            if step - last_gain >= FAST_PATIENCE:
                break
        done.extend(theta.detach().cpu().float().unbind(0))
        starts.extend(init.unbind(0))
        curves.extend(batch_curves)
    return done, starts, curves, False


def train_melbo(
    lm: LoadedModel,
    spec: MelboSpec,
    *,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    orthogonal_to: Tensor | None = None,
) -> MelboResult:
    """Train spec.n_vectors vectors (minus any already in `orthogonal_to`, which they avoid).

    `orthogonal_to` [F, d] holds vectors stored earlier by the same run: training resumes at
    index F with the same random starts it would have had. Cancelled runs return the vectors
    finished so far.
    """
    began = time.perf_counter()
    problem = _Problem(lm, spec)
    fixed = torch.zeros(0, problem.width) if orthogonal_to is None else orthogonal_to.detach().float().cpu()
    if fixed.dim() != 2 or fixed.shape[1] != problem.width:
        raise EngineError(f"earlier vectors must have shape [F, {problem.width}], got {tuple(fixed.shape)}")
    first = fixed.shape[0]
    n = max(0, spec.n_vectors - first)
    if spec.method == "random":
        # The random baseline: the trained vectors' starts, orthogonalized the same way.
        raw = [initial_vector(spec.seed, first + i, problem.width) for i in range(n)]
        keep = fixed if spec.orthogonal else fixed[:0]
        stacked = retract(torch.stack(raw), keep, problem.radius, spec.orthogonal) if n else fixed[:0]
        curves: list[list[float]] = [[] for _ in range(n)]
        done, starts, cancelled = list(stacked.unbind(0)), list(stacked.unbind(0)), False
    elif spec.mode == "reference":
        done, starts, curves, cancelled = _reference(problem, n, fixed, first, on_progress, should_stop)
    else:
        done, starts, curves, cancelled = _fast(problem, n, fixed, first, on_progress, should_stop)
    vectors = torch.stack(done) if done else torch.zeros(0, problem.width)
    records: list[VectorRecord] = []
    if done:
        objectives, shares = problem.final(vectors)
        for i, (vec, start, curve) in enumerate(zip(done, starts, curves, strict=True)):
            records.append(
                VectorRecord(
                    index=first + i,
                    objective=float(objectives[i]),
                    curve=curve,
                    steps=len(curve),
                    start_cosine=float(torch.nn.functional.cosine_similarity(vec, start.float(), dim=0)),
                    top_position_share=float(shares[i]),
                )
            )
    return MelboResult(
        vectors=vectors,
        records=records,
        source=problem.source,
        target=problem.target,
        radius=problem.radius,
        residual_norm=problem.residual_norm,
        cancelled=cancelled,
        seconds=time.perf_counter() - began,
        settings=spec.to_dict(),
    )
