"""Pick R automatically: the radius where the target's response to random vectors stops being linear.

ratio(R) = sqrt( mean_v ‖Δ(R v) − R J v‖² / ‖R J v‖² ) over random unit v at the source block,
Δ(θ) = Z_t(θ) − Z_t(0) on the target positions, J the Jacobian at 0 (docs/methods.md). The
calibrated R is where ratio(R) = threshold (0.5 by default).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.errors import EngineError
from engine.models import LoadedModel
from engine.prompts import encode_prompts, target_mask
from engine.specs import CalibrateSpec
from engine.steer.metrics import downstream_deltas, next_token_kl, residual_norm
from engine.steer.segment import Segment

LIMIT = 100.0  # give up past this radius, relative to the residual norm
RTOL = 0.02  # stop when the ratio is within 2% of the threshold
MAX_EVALS = 30


def random_directions(n: int, width: int, seed: int) -> Tensor:
    """n random unit vectors, the same for the same seed on any device: [n, d] float32."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, width, generator=g)
    return v / v.norm(dim=1, keepdim=True)


class RatioProbe:
    """The nonlinearity ratio of one segment and set of directions, as a function of R."""

    def __init__(self, seg: Segment, mask: Tensor, directions: Tensor, *, step: float, chunk: int = 32):
        self.seg, self.mask, self.chunk = seg, mask, chunk
        self.directions = directions  # [D, d] unit rows
        # J v by a central finite difference, not torch.func.jvp: forward AD is not implemented for
        # the CPU flash SDPA kernel, and forcing the math kernel made jvp ~2x slower than the two
        # passes here, which also work for every attention implementation. Error is O(step²).
        plus = torch.cat(list(downstream_deltas(seg, step * directions, mask, chunk=chunk)))
        minus = torch.cat(list(downstream_deltas(seg, -step * directions, mask, chunk=chunk)))
        self.step = step
        self.jv = (plus - minus) / (2 * step)  # [D, N, d] float32
        # Δ(hv) − hJv = (Δ(hv) + Δ(−hv)) / 2: the ratio at R = step comes free with the difference.
        self.at_step = self._ratio((plus + minus) / 2, step * self.jv)

    @staticmethod
    def _ratio(residual: Tensor, linear: Tensor) -> float:
        """sqrt(mean over directions of ‖residual‖² / ‖linear‖²); both [D, N, d]."""
        err = residual.flatten(1).pow(2).sum(dim=1)  # [D]
        lin = linear.flatten(1).pow(2).sum(dim=1).clamp_min(1e-30)  # [D]
        return math.sqrt(float((err / lin).mean()))

    def __call__(self, radius: float) -> float:
        if radius == self.step:
            return self.at_step
        linear = radius * self.jv  # [D, N, d]
        parts = downstream_deltas(self.seg, radius * self.directions, self.mask, chunk=self.chunk)
        return self._ratio(torch.cat(list(parts)) - linear, linear)


@dataclass
class CalibrationResult:
    radius: float  # calibrated R: ratio(R) ≈ threshold
    ratio: float  # the ratio measured at that R
    residual_norm: float  # median residual norm at the source over the target positions
    relative: float  # radius / residual_norm
    source: int
    target: int
    threshold: float
    directions: int
    seconds: float
    curve: list[tuple[float, float]] = field(default_factory=list)  # (R, ratio) tried, sorted by R

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_radius(
    probe: Callable[[float], float],
    threshold: float,
    start: float,
    limit: float,
    *,
    rtol: float = RTOL,
    max_evals: int = MAX_EVALS,
) -> tuple[float, float, list[tuple[float, float]]]:
    """R with probe(R) within rtol of threshold, for a probe increasing in R: (R, ratio, samples)."""
    search = radius_search(threshold, start, limit, rtol=rtol, max_evals=max_evals)
    try:
        radius = next(search)
        while True:
            radius = search.send(probe(radius))
    except StopIteration as end:
        found: tuple[float, float, list[tuple[float, float]]] = end.value
        return found


def radius_search(
    threshold: float, start: float, limit: float, *, rtol: float = RTOL, max_evals: int = MAX_EVALS
) -> Generator[float, float, tuple[float, float, list[tuple[float, float]]]]:
    """The search behind `find_radius` as a coroutine: it yields each R to try and is sent its
    ratio, so a caller can do other work between evaluations.

    Brackets by growing R geometrically from `start` (each jump extrapolates log ratio linearly in
    log R, at least x1.05 and at most x16), then narrows the bracket by false position on
    log ratio vs log R, with bisection when one end stalls. Near 0 the ratio grows about linearly
    in R, so a handful of evaluations usually suffice.
    """
    samples: list[tuple[float, float]] = []

    def f(r: float) -> Generator[float, float, float]:
        if len(samples) >= max_evals:
            raise EngineError(f"no radius found within {max_evals} evaluations (tried {sorted(samples)})")
        value = yield r
        samples.append((r, value))
        return value

    def close(value: float) -> bool:
        return abs(value / threshold - 1) <= rtol

    lo = start
    f_lo = yield from f(lo)
    hi, f_hi = lo, f_lo
    while f_lo >= threshold and not close(f_lo):  # already nonlinear: look below
        if lo < start * 1e-4:
            raise EngineError(f"the response is already nonlinear (ratio {f_lo:.3g}) at R = {lo:.3g}")
        hi, f_hi = lo, f_lo
        lo = lo / 4
        f_lo = yield from f(lo)
    slope = 1.0  # d log ratio / d log R; ~1 near R = 0, where the quadratic term dominates
    while f_hi < threshold and not close(f_hi):
        if hi >= limit:
            raise EngineError(
                f"the response stays nearly linear up to R = {hi:.3g} (ratio {f_hi:.3g} < threshold "
                f"{threshold}): choose a lower threshold"
            )
        if hi > lo and f_hi > f_lo > 0:
            slope = min(4.0, max(0.5, math.log(f_hi / f_lo) / math.log(hi / lo)))
        lo, f_lo = hi, f_hi
        grow = min(16.0, max(1.05, (threshold / max(f_hi, 1e-12)) ** (1 / slope)))
        hi = min(limit, hi * grow)
        f_hi = yield from f(hi)
    stale = 0  # > 0: lo moved that many times in a row; < 0: hi did
    while not close(f_lo) and not close(f_hi) and hi / lo > 1 + 1e-4:
        x_lo, x_hi = math.log(lo), math.log(hi)
        y_lo, y_hi, y_t = math.log(max(f_lo, 1e-12)), math.log(f_hi), math.log(threshold)
        x = x_lo + (y_t - y_lo) * (x_hi - x_lo) / (y_hi - y_lo) if y_hi > y_lo else (x_lo + x_hi) / 2
        if abs(stale) >= 2 or not x_lo < x < x_hi:
            x = (x_lo + x_hi) / 2
        r = math.exp(x)
        value = yield from f(r)
        if value < threshold:
            lo, f_lo, stale = r, value, max(stale, 0) + 1
        else:
            hi, f_hi, stale = r, value, min(stale, 0) - 1
    best = min(samples, key=lambda s: abs(math.log(max(s[1], 1e-12) / threshold)))
    return best[0], best[1], sorted(samples)


def fd_step(norm: float, dtype: torch.dtype) -> float:
    """Finite-difference step, also the first R tried: ~eps^(1/3) of the residual scale balances
    truncation and rounding."""
    return 0.2 * norm * torch.finfo(dtype).eps ** (1 / 3)  # float32: 1e-3 x norm


class Calibrator:
    """Calibration one ratio evaluation per `step()`, so a caller can interleave other work.

    Construction does the fixed part (activations, residual norm, the Jacobian probe).
    """

    def __init__(
        self, lm: LoadedModel, spec: CalibrateSpec, *, segment: tuple[Segment, Tensor] | None = None
    ) -> None:
        """`segment`: the spec's segment and target mask when the caller has built them already."""
        self.began = time.perf_counter()
        self.spec = spec
        self.source, self.target = spec.span(lm.info)
        device = next(lm.model.parameters()).device
        if segment is None:
            batch = encode_prompts(lm.tokenizer, spec.prompts).to(device)
            mask = target_mask(batch, spec.positions)
            seg = Segment(lm.model, batch, self.source, self.target)
        else:
            seg, mask = segment
        self.norm = residual_norm(seg, mask)
        dtype = seg.h_source.dtype
        directions = random_directions(spec.directions, lm.info.width, spec.seed).to(device, dtype)
        self.probe = RatioProbe(seg, mask, directions, step=fd_step(self.norm, dtype))
        self.search = radius_search(spec.threshold, self.probe.step, LIMIT * self.norm)
        self.next_radius: float | None = next(self.search)
        self.found: tuple[float, float, list[tuple[float, float]]] | None = None
        self.probes = 0  # ratios measured so far

    @property
    def finished(self) -> bool:
        return self.found is not None

    def step(self) -> tuple[float, float]:
        """Measure the ratio at the next radius the search wants: (R, ratio)."""
        assert self.next_radius is not None, "the calibration has finished"
        radius = self.next_radius
        value = self.probe(radius)
        self.probes += 1
        try:
            self.next_radius = self.search.send(value)
        except StopIteration as end:
            self.found, self.next_radius = end.value, None
        return radius, value

    def result(self) -> CalibrationResult:
        assert self.found is not None, "the calibration has not finished"
        radius, ratio, curve = self.found
        return CalibrationResult(
            radius=radius,
            ratio=ratio,
            residual_norm=self.norm,
            relative=radius / self.norm,
            source=self.source,
            target=self.target,
            threshold=self.spec.threshold,
            directions=self.spec.directions,
            seconds=time.perf_counter() - self.began,
            curve=curve,
        )


def calibrate(
    lm: LoadedModel, spec: CalibrateSpec, *, on_progress: Callable[[float, float], None] | None = None
) -> CalibrationResult:
    """Find the radius where the nonlinearity ratio reaches spec.threshold."""
    calibrator = Calibrator(lm, spec)
    while not calibrator.finished:
        radius, value = calibrator.step()
        if on_progress is not None:
            on_progress(radius, value)
    return calibrator.result()


@dataclass
class SweepPoint:
    """Learned vs random vectors at one radius."""

    radius: float
    relative: float  # radius / residual norm at the source
    learned_objective: list[float]
    random_objective: list[float]
    learned_kl: list[float]  # next-token KL(steered ‖ unsteered) at the prompt end, per vector
    random_kl: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep_radius(
    lm: LoadedModel,
    prompts: Sequence[str],
    radii: Sequence[float],
    *,
    source: int | None = None,
    target: int | None = None,
    n_vectors: int = 8,
    steps: int | None = None,
    positions: str = "user",
    seed: int = 0,
    **options: Any,
) -> list[SweepPoint]:
    """For each R: objective and next-token KL of MELBO vectors and of random vectors at that R.

    `options` go to MelboSpec unchanged (p, q, lr, loss, normalize, mode, batch_size, ...).
    """
    from engine.methods.melbo import train_melbo  # lazily: the trainer is heavy and optional here
    from engine.specs import MelboSpec

    if not radii:
        raise EngineError("give at least one radius")
    points: list[SweepPoint] = []
    device = next(lm.model.parameters()).device
    batch = encode_prompts(lm.tokenizer, prompts).to(device)
    for radius in radii:
        common: dict[str, Any] = dict(
            prompts=tuple(prompts),
            source=source,
            target=target,
            radius=float(radius),
            n_vectors=n_vectors,
            steps=steps,
            positions=positions,
            seed=seed,
            **options,
        )
        learned = train_melbo(lm, MelboSpec(method="melbo", **common))
        # Same seed: the random baseline is the learned vectors' own starts, orthogonalized.
        random = train_melbo(lm, MelboSpec(method="random", **common))
        points.append(
            SweepPoint(
                radius=float(radius),
                relative=float(radius) / learned.residual_norm,
                learned_objective=[float(o) for o in learned.objectives],
                random_objective=[float(o) for o in random.objectives],
                learned_kl=next_token_kl(lm.model, batch, learned.source, learned.vectors).tolist(),
                random_kl=next_token_kl(lm.model, batch, random.source, random.vectors).tolist(),
            )
        )
    return points
