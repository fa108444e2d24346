"""MELBO: unsupervised steering vectors of norm R that maximally change a later layer.

Two modes on one objective (engine/steer/objective.py):
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
from engine.methods.default_radius import ShareCalibrator
from engine.methods.melbo_problem import MelboProblem
from engine.models import LoadedModel
from engine.progress import Progress
from engine.specs import MelboSpec
from engine.steer.objective import orthonormal_basis, project_out, retract
from engine.steer.steering import steer

ProgressFn = Callable[[int, int, float], None]  # (vector index, step, objective)
StopFn = Callable[[], bool]

DEFAULT_STEPS = 300  # the published step count (reference mode)
REFERENCE_LR = 1e-3  # published AdamW learning rate
FAST_STEPS = 100  # fast mode's step budget; its step size decays over it (60 is faster but less fluent)
FAST_ANGLE = 0.08  # fast mode: Adam lr = FAST_ANGLE * R / sqrt(d), about that many radians a step
FAST_FINAL_LR = 0.1  # the step size decays (cosine) to this share of its start by the last step
FAST_TOL = 5e-3  # fast mode stops when no vector gained this share of its objective ...
FAST_PATIENCE = 10  # ... over this many steps
# The default R used to be this share of the median residual norm at the source; it is now
# calibrated per model (engine/methods/default_radius.py). Steering adapters still size their
# default R from it.
RADIUS_FRACTION = 0.08


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
    # How the default R was found (engine/methods/default_radius.py); None when R or a share was given.
    calibration: dict[str, Any] | None = None

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


def _with(fixed: Tensor, earlier: list[Tensor]) -> Tensor:
    """Stored vectors [F, d] followed by those finished in this call."""
    return torch.cat([fixed, torch.stack(earlier)]) if earlier else fixed


class _Batch:
    """Vectors trained together: one in reference mode, `batch_size` in fast mode."""

    def __init__(self, first: int, init: Tensor, before: Tensor, optimizer: torch.optim.Optimizer) -> None:
        self.first, self.init, self.before, self.optimizer = first, init, before, optimizer
        self.theta = optimizer.param_groups[0]["params"][0]
        self.curves: list[list[float]] = [[] for _ in range(init.shape[0])]
        self.schedule: torch.optim.lr_scheduler.LRScheduler | None = None
        self.best = torch.full((init.shape[0],), -math.inf)
        self.last_gain = 0

    @property
    def steps(self) -> int:
        return len(self.curves[0])


class MelboTrainer:
    """Trains a run's vectors one optimizer step at a time, so a caller can interleave other work.

    `step()` is one unit: an optimizer step of the vector (reference mode) or batch (fast mode) in
    training, or the whole random baseline. It returns the records of the vectors it finished;
    `take()` hands those vectors over as they come, `result()` gives everything.

        trainer = MelboTrainer(lm, spec)
        while not trainer.finished:
            trainer.step()
    """

    def __init__(
        self,
        lm: LoadedModel,
        spec: MelboSpec,
        *,
        orthogonal_to: Tensor | None = None,
        on_progress: ProgressFn | None = None,
        starts: Tensor | None = None,
    ) -> None:
        """`starts` [n_vectors, d]: where each vector starts instead of a random direction (a warm
        start; each is still projected and put at norm R first)."""
        self.began = time.perf_counter()
        self.spec, self.on_progress = spec, on_progress
        self.problem = MelboProblem(lm, spec)
        width = self.problem.width
        fixed = torch.zeros(0, width) if orthogonal_to is None else orthogonal_to.detach().float().cpu()
        if fixed.dim() != 2 or fixed.shape[1] != width:
            raise EngineError(f"earlier vectors must have shape [F, {width}], got {tuple(fixed.shape)}")
        self.fixed, self.first = fixed, fixed.shape[0]
        if starts is not None and (starts.dim() != 2 or starts.shape != (spec.n_vectors, width)):
            raise EngineError(
                f"starts must have shape [{spec.n_vectors}, {width}], got {tuple(starts.shape)}"
            )
        if starts is not None and not bool(torch.isfinite(starts).all()):
            raise EngineError("starts contain NaN or infinite values")
        self.starts = None if starts is None else starts.detach().float().cpu()
        self.total = max(0, spec.n_vectors - self.first)
        self.budget = step_budget(spec)
        # Neither R nor a share given: the default share, calibrated per model (cached), first.
        self.default: ShareCalibrator | None = None
        if self.problem.known_radius is None:
            source, target = self.problem.source, self.problem.target
            self.default = ShareCalibrator(lm, source, target, spec.positions)
            self._use_default()
        self.vectors: list[Tensor] = []
        self.records: list[VectorRecord] = []
        self.taken = 0
        self.early_stops = 0
        self.finished_steps = 0  # steps the finished batches took (an ETA's measure of a batch)
        self.batch: _Batch | None = None

    @property
    def finished(self) -> bool:
        return len(self.vectors) >= self.total

    @property
    def calibrating(self) -> bool:
        """Still calibrating the default R (a step is then one calibration probe)."""
        return self.problem.known_radius is None

    @property
    def lr(self) -> float:
        if self.spec.lr is not None:
            return self.spec.lr
        if self.spec.mode == "reference":
            return REFERENCE_LR
        return FAST_ANGLE * self.problem.radius / math.sqrt(self.problem.width)

    def _use_default(self) -> None:
        if self.default is not None and self.default.finished:
            self.problem.known_radius = self.default.result().share * self.problem.residual_norm

    def progress(self) -> Progress:
        training = 0 if self.batch is None else self.batch.init.shape[0]
        step = 0 if self.batch is None else self.batch.steps
        per_batch = self.spec.batch_size if self.spec.mode == "fast" else 1
        return Progress(
            self.total,
            len(self.vectors),
            training,
            step,
            self.budget,
            per_batch,
            self.early_stops,
            self.finished_steps,
        )

    def step(self) -> list[VectorRecord]:
        """One unit of training; the records of the vectors it finished (often none)."""
        if self.finished:
            return []
        if self.calibrating:
            assert self.default is not None
            self.default.step()
            self._use_default()
            return []
        if self.spec.method == "random":
            return self._random()
        if self.batch is None:
            self.batch = self._start_batch()
        batch = self.batch
        converged = False
        if batch.steps < self.budget:
            values = self._reference_step(batch) if self.spec.mode == "reference" else self._fast_step(batch)
            now = values.detach().cpu()
            for j, value in enumerate(now.tolist()):
                batch.curves[j].append(value)
                if self.on_progress is not None:
                    self.on_progress(batch.first + j, batch.steps - 1, value)
            if self.spec.mode == "fast":
                gained = now > batch.best + FAST_TOL * batch.best.abs().clamp_min(1e-12)
                if bool(gained.any()):
                    batch.last_gain = batch.steps - 1
                batch.best = torch.maximum(batch.best, now)
                converged = batch.steps - 1 - batch.last_gain >= FAST_PATIENCE
        if batch.steps < self.budget and not converged:
            return []
        self.early_stops += int(converged and batch.steps < self.budget)
        self.finished_steps += batch.steps
        self.batch = None
        return self._finish(batch.theta.detach().cpu().float(), batch.init, batch.curves)

    def take(self) -> MelboResult:
        """The vectors finished since the last take, as a result of their own."""
        vectors, records = self.vectors[self.taken :], self.records[self.taken :]
        self.taken = len(self.vectors)
        return self._result(vectors, records, cancelled=False)

    def result(self, *, cancelled: bool = False) -> MelboResult:
        """Every vector finished so far (a cancelled run keeps them)."""
        return self._result(self.vectors, self.records, cancelled=cancelled)

    # internals

    def _result(self, vectors: list[Tensor], records: list[VectorRecord], *, cancelled: bool) -> MelboResult:
        return MelboResult(
            vectors=torch.stack(vectors) if vectors else torch.zeros(0, self.problem.width),
            records=list(records),
            source=self.problem.source,
            target=self.problem.target,
            radius=self.problem.known_radius or 0.0,
            residual_norm=self.problem.residual_norm,
            cancelled=cancelled,
            seconds=time.perf_counter() - self.began,
            settings=self.spec.to_dict(),
            calibration=None
            if self.default is None or not self.default.finished
            else self.default.result().to_dict(),
        )

    def _before(self) -> Tensor:
        """The vectors a new one must avoid: stored ones and those finished here (none if not orthogonal)."""
        before = _with(self.fixed, self.vectors)
        return before if self.spec.orthogonal else before[:0]

    def _random(self) -> list[VectorRecord]:
        """The random baseline: the trained vectors' starts, orthogonalized the same way."""
        n = self.total - len(self.vectors)
        index = self.first + len(self.vectors)
        raw = self._starts(index, n)
        stacked = retract(raw, self._before(), self.problem.radius, self.spec.orthogonal)
        return self._finish(stacked, stacked, [[] for _ in range(n)])

    def _starts(self, index: int, k: int) -> Tensor:
        """Where vectors index .. index + k - 1 start: [k, d]."""
        if self.starts is not None:
            return self.starts[index : index + k]
        return torch.stack([initial_vector(self.spec.seed, index + j, self.problem.width) for j in range(k)])

    def _start_batch(self) -> _Batch:
        spec, problem = self.spec, self.problem
        index = self.first + len(self.vectors)
        k = 1 if spec.mode == "reference" else min(spec.batch_size, self.total - len(self.vectors))
        before = self._before()
        raw = self._starts(index, k)
        init = retract(raw, before, problem.radius, spec.orthogonal)
        theta = init.clone().to(problem.device).requires_grad_(True)
        if spec.mode == "reference":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                [theta], lr=self.lr, betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True
            )
            batch = _Batch(index, init, orthonormal_basis(before).to(problem.device), optimizer)
        else:
            optimizer = torch.optim.Adam([theta], lr=self.lr, betas=(0.9, 0.98))
            batch = _Batch(index, init, before.to(problem.device), optimizer)
            steps = max(self.budget, 1)
            # Large steps find the basin quickly; shrinking them lets every vector settle within budget.
            batch.schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda t: FAST_FINAL_LR + (1 - FAST_FINAL_LR) * 0.5 * (1 + math.cos(math.pi * t / steps)),
            )
        return batch

    def _reference_step(self, batch: _Batch) -> Tensor:
        """The published procedure: the whole model, tangent gradient, retraction to the sphere."""
        problem, model, radius = self.problem, self.problem.lm.model, self.problem.radius
        theta, basis = batch.theta, batch.before  # here `before` is already an orthonormal basis
        with steer(model, problem.source, theta[0]):
            out = model(**problem.batch.model_inputs(), output_hidden_states=True, use_cache=False)
        value = problem.objective(out.hidden_states[problem.target], problem.segment.z0)[0]
        batch.optimizer.zero_grad()
        (-value).backward()
        with torch.no_grad():
            assert theta.grad is not None
            grad = project_out(theta.grad, basis)
            theta.grad = grad - (grad * theta).sum(-1, keepdim=True) * theta / radius**2  # tangent
        batch.optimizer.step()
        with torch.no_grad():
            theta.copy_(project_out(theta, basis))
            theta.mul_(radius / theta.norm(dim=-1, keepdim=True))
        return value.detach()[None]

    def _fast_step(self, batch: _Batch) -> Tensor:
        """One step of the batch on the cached segment, retracted in order (orthogonal, norm R)."""
        problem, seg, radius, theta = self.problem, self.problem.segment, self.problem.radius, batch.theta
        values = problem.objective(seg.run(theta), seg.z0)  # [K]
        batch.optimizer.zero_grad()
        (-values.sum()).backward()
        with torch.no_grad():
            grad = theta.grad
            assert grad is not None
            theta.grad = grad - (grad * theta).sum(-1, keepdim=True) * theta / radius**2
        batch.optimizer.step()
        assert batch.schedule is not None
        batch.schedule.step()
        with torch.no_grad():
            theta.copy_(retract(theta, batch.before, radius, self.spec.orthogonal))
        return values.detach()

    def _finish(self, vectors: Tensor, starts: Tensor, curves: list[list[float]]) -> list[VectorRecord]:
        objectives, shares = self.problem.final(vectors)
        records = []
        for j, (vec, start, curve) in enumerate(zip(vectors, starts, curves, strict=True)):
            records.append(
                VectorRecord(
                    index=self.first + len(self.vectors),
                    objective=float(objectives[j]),
                    curve=curve,
                    steps=len(curve),
                    start_cosine=float(torch.nn.functional.cosine_similarity(vec, start.float(), dim=0)),
                    top_position_share=float(shares[j]),
                )
            )
            self.vectors.append(vec)
            self.records.append(records[-1])
        return records


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
    trainer = MelboTrainer(lm, spec, orthogonal_to=orthogonal_to, on_progress=on_progress)
    while not trainer.finished:
        if should_stop is not None and should_stop():
            return trainer.result(cancelled=True)
        trainer.step()
    return trainer.result()
