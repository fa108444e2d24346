"""Deep Causal Transcoding (Mack & Turner, Dec 2024), exponential variant: many steering vectors at once.

A factor ℓ is a unit input direction v_ℓ at the source and a unit output direction u_ℓ at the
target. With Δ(θ) the change of hidden_states[target] when θ is added at the source, averaged
over each prompt's target positions and then over the prompts, the method
- starts from the Jacobian at θ = 0: the top right singular vectors of P·J, P a random projection
  of the output to `projection` dimensions (vector-Jacobian products), then U = Δ(R·V) normalized;
- iterates: V ← Q of QR(V) (inputs only, signs kept); for every factor G_U = Δ(R·v) and
  G_V = R·∇_v ⟨u, Δ(R·v)⟩; then U, V ← G_U, G_V normalized factor by factor (an "infinite step",
  β = 1), so the last V need not be orthogonal;
- ranks the factors by α², α = K⁻¹ (⟨u_ℓ, Δ(R·v_ℓ)⟩)_ℓ with K = (UᵀU) ⊙ expm1(VᵀV).

Block convention: θ is added to the *output* of the source block both while learning and when
steering (the published code learns at the block's input and steers at its output, one block
apart), so R·v_ℓ steers exactly where it was learned, like a MELBO vector of the same block.

Every unit of work (one batch of factors through the cached segment, forward and backward) is one
`step()`, so a caller can interleave other work. When R is not given it is calibrated first (the
engine's calibration, one probe per step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.errors import EngineError
from engine.methods.calibrate import Calibrator
from engine.models import LoadedModel
from engine.progress import Progress
from engine.prompts import encode_targets
from engine.specs import CalibrateSpec, DctSpec
from engine.steer.metrics import median_norm
from engine.steer.segment import Segment

ITERATIONS = 10  # the published count


class Response(Protocol):
    """Δ(θ) for a batch of inputs θ [K, d]: the output change per prompt, [K, P, d_out], differentiable."""

    width: int  # d
    out_width: int  # d_out

    def __call__(self, theta: Tensor) -> Tensor: ...


class SegmentResponse:
    """Δ(θ) of a model: blocks source+1 .. target-1 on cached activations, averaged over each
    prompt's target positions."""

    def __init__(self, seg: Segment, mask: Tensor) -> None:
        self.seg = seg
        self.mask = mask.to(seg.h_source.device)
        self.counts = self.mask.sum(dim=1).clamp_min(1).float()  # [P]
        self.width = self.out_width = int(seg.h_source.shape[-1])

    def __call__(self, theta: Tensor) -> Tensor:
        k, p = theta.shape[0], self.seg.prompts
        z = self.seg.run(theta)  # [K*P, T, d]
        delta = z.float().view(k, p, *z.shape[1:]) - self.seg.z0.float()[None]
        delta = delta * self.mask[None, :, :, None]
        return delta.sum(dim=2) / self.counts[None, :, None]


def orthonormal_rows(v: Tensor) -> Tensor:
    """Q of a QR decomposition of the rows of v [m, d], each row's sign kept (its cosine with the
    row it came from is positive)."""
    q, r = torch.linalg.qr(v.double().T)  # q [d, m]
    signs = torch.sign(r.diagonal())
    signs[signs == 0] = 1
    return (q * signs).T.to(v.dtype)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(lo, min(n, lo + size)) for lo in range(0, n, size)]


class Transcoder:
    """The exponential DCT on any response, one batch of factors per `step()`.

    t = Transcoder(response, n_factors=64, radius=R)
    while not t.finished:
        t.step()
    t.order, t.alpha, t.V  # factors by α² (largest first), their α, input directions
    """

    def __init__(
        self,
        response: Response,
        *,
        n_factors: int,
        radius: float,
        iterations: int = ITERATIONS,
        batch_size: int = 32,
        projection: int = 32,
        seed: int = 0,
        beta: float = 1.0,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 1 <= n_factors <= response.width:
            raise EngineError(f"DCT needs between 1 and {response.width} factors, got {n_factors}")
        if not math.isfinite(radius) or radius <= 0:
            raise EngineError(f"R (radius) must be a finite number > 0, got {radius}")
        if not 0 < beta <= 1:
            raise EngineError(f"beta must be in (0, 1], got {beta}")
        self.response, self.m, self.radius, self.beta = response, n_factors, radius, beta
        self.iterations, self.batch_size, self.projection = iterations, batch_size, projection
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.V = torch.zeros(n_factors, response.width)  # input directions (rows)
        self.U = torch.zeros(n_factors, response.out_width)  # output directions (rows)
        self.V0 = self.V  # the Jacobian start
        self.curves: list[list[float]] = [[] for _ in range(n_factors)]  # ⟨u, Δ(R·v)⟩ per iteration
        self.effect = torch.zeros(n_factors)  # ⟨u_ℓ, Δ(R·v_ℓ)⟩ of the final factors
        self.alpha = torch.zeros(n_factors)
        self.order = torch.arange(n_factors)  # factors by α², largest first
        self.phase = "jacobian"
        self.iteration = 0
        self.units_done = 0
        batches = len(_batches(n_factors, batch_size))
        self.units_total = len(_batches(projection, batch_size)) + batches * (iterations + 2)
        self.finished = False
        self._units = self._run()

    def step(self) -> None:
        """One batch of factors (or of projection directions) through the response."""
        if self.finished:
            return
        try:
            next(self._units)
            self.units_done += 1
        except StopIteration:
            self.finished = True

    # the algorithm, as a generator that yields after every unit

    def _run(self) -> Iterator[None]:
        yield from self._jacobian_start()
        self.phase = "start"
        yield from self._outputs()
        self.phase = "iterations"
        for iteration in range(self.iterations):
            self.iteration = iteration
            yield from self._iterate()
        self.phase = "ranking"
        yield from self._rank()
        self.finished = True

    def _delta(self, theta: Tensor) -> Tensor:
        """Δ(θ) averaged over prompts: [K, d_out]."""
        return self.response(theta.to(self.device)).mean(dim=1)

    def _jacobian_start(self) -> Iterator[None]:
        d = self.response.width
        out = F.normalize(
            torch.randn(self.projection, self.response.out_width, generator=self.generator), dim=1
        )
        rows = []
        for part in _batches(self.projection, self.batch_size):
            theta = torch.zeros(part.stop - part.start, d, device=self.device, requires_grad=True)
            delta = self._delta(theta)  # [k, d_out]
            (delta * out[part].to(delta.device)).sum().backward()
            assert theta.grad is not None
            rows.append(theta.grad.detach().float().cpu())  # Jᵀ u for each projection direction
            yield
        projected = torch.cat(rows)  # [projection, d] = P·J
        _, _, vh = torch.linalg.svd(projected.double(), full_matrices=False)
        top = vh[: min(self.m, vh.shape[0])]
        if top.shape[0] < self.m:  # past the projection's rank: random directions orthogonal to those
            extra = torch.randn(self.m - top.shape[0], d, generator=self.generator).double()
            top = orthonormal_rows(torch.cat([top, extra]))
        self.V = self.V0 = top.float()

    def _outputs(self) -> Iterator[None]:
        """U = Δ(R·V) normalized."""
        parts = []
        for part in _batches(self.m, self.batch_size):
            with torch.no_grad():
                parts.append(self._delta(self.radius * self.V[part]).float().cpu())
            yield
        self.U = F.normalize(torch.cat(parts), dim=1)

    def _iterate(self) -> Iterator[None]:
        self.V = orthonormal_rows(self.V)
        g_u, g_v = torch.zeros_like(self.U), torch.zeros_like(self.V)
        for part in _batches(self.m, self.batch_size):
            theta = (self.radius * self.V[part]).to(self.device).requires_grad_(True)
            delta = self._delta(theta)  # [k, d_out]
            effect = (delta * self.U[part].to(delta.device)).sum(dim=1)  # ⟨u, Δ(R·v)⟩ per factor
            effect.sum().backward()
            assert theta.grad is not None
            g_u[part] = delta.detach().float().cpu()
            g_v[part] = self.radius * theta.grad.detach().float().cpu()  # ∇_v = R · ∇_θ
            for j, value in zip(range(part.start, part.stop), effect.detach().cpu().tolist(), strict=True):
                self.curves[j].append(float(value))
            yield
        # β = 1 is the published "infinite step"; β < 1 keeps part of the last iterate.
        beta = self.beta
        self.U = F.normalize(beta * F.normalize(g_u, dim=1) + (1 - beta) * self.U, dim=1)
        self.V = F.normalize(beta * F.normalize(g_v, dim=1) + (1 - beta) * self.V, dim=1)

    def _rank(self) -> Iterator[None]:
        effects = []
        for part in _batches(self.m, self.batch_size):
            with torch.no_grad():
                delta = self._delta(self.radius * self.V[part]).float().cpu()
            effects.append((delta * self.U[part]).sum(dim=1))
            yield
        self.effect = torch.cat(effects)
        u, v = self.U.double(), self.V.double()
        kernel = (u @ u.T) * torch.expm1(v @ v.T)
        solved = torch.linalg.lstsq(kernel, self.effect.double()[:, None], driver="gelsd").solution[:, 0]
        self.alpha = solved.float()
        self.order = torch.argsort(self.alpha.pow(2), descending=True, stable=True)


@dataclass
class DctRecord:
    index: int  # rank by α² (0: the strongest factor)
    objective: float  # ⟨u, Δ(R·v)⟩: the change along the factor's own output direction
    alpha: float  # the factor's strength in the exponential model
    score: float  # α², what the factors are ranked by
    curve: list[float]  # ⟨u, Δ(R·v)⟩ at every iteration
    steps: int  # iterations
    start_cosine: float  # cosine of v with its Jacobian start

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class DctResult:
    vectors: Tensor  # [m, d] float32: R·v for each factor, by α² (largest first)
    outputs: Tensor  # [m, d_out]: the factors' output directions, same order
    records: list[DctRecord]
    source: int
    target: int
    radius: float
    residual_norm: float
    calibration: dict[str, Any] | None = None  # when R was calibrated
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def alphas(self) -> list[float]:
        return [r.alpha for r in self.records]


ProgressFn = Callable[[str, Progress], None]  # (phase, where the run stands)


class DctTrainer:
    """A DCT run on a model, one unit per `step()`: a calibration probe while R is calibrated, then
    one batch of factors of the transcoder. `step()` returns the records when the run finishes."""

    def __init__(self, lm: LoadedModel, spec: DctSpec) -> None:
        self.began = time.perf_counter()
        self.spec = spec
        self.source, self.target = spec.span(lm.info)
        self.device = next(lm.model.parameters()).device
        batch, mask = encode_targets(
            lm.tokenizer, spec.prompts, spec.positions, lm.info.context_length, self.device
        )
        self.segment = Segment(lm.model, batch, self.source, self.target)
        self.residual_norm = median_norm(self.segment.h_source, mask)
        self.response = SegmentResponse(self.segment, mask)
        self.calibrator: Calibrator | None = None
        self.transcoder: Transcoder | None = None
        self.calibration: dict[str, Any] | None = None
        self.records: list[DctRecord] = []
        self.vectors = torch.zeros(0, lm.info.width)
        if spec.radius is None:
            calibrate = CalibrateSpec(
                prompts=spec.prompts,
                model=spec.model,
                source=self.source,
                target=self.target,
                positions=spec.positions,
                threshold=spec.threshold,
                seed=spec.seed,
            )
            self.calibrator = Calibrator(lm, calibrate, segment=(self.segment, mask))
        else:
            self._start(spec.radius)

    @property
    def radius(self) -> float | None:
        return None if self.transcoder is None else self.transcoder.radius

    @property
    def finished(self) -> bool:
        return self.transcoder is not None and self.transcoder.finished

    @property
    def phase(self) -> str:
        """calibration, then the transcoder's: jacobian, start, iterations, ranking."""
        return "calibration" if self.transcoder is None else self.transcoder.phase

    def progress(self) -> Progress:
        """The factors train as one batch whose budget is the transcoder's units (none while R is
        calibrated: the calibration's probe count is not known ahead)."""
        m, t = self.spec.n_vectors, self.transcoder
        if t is None:
            return Progress(total=m, done=0, training=0, step=0, budget=0, per_batch=m)
        if t.finished:
            return Progress(total=m, done=m, training=0, step=0, budget=t.units_total, per_batch=m)
        return Progress(total=m, done=0, training=m, step=t.units_done, budget=t.units_total, per_batch=m)

    def step(self) -> list[DctRecord]:
        if self.finished:
            return []
        if self.transcoder is None:
            assert self.calibrator is not None
            self.calibrator.step()
            if self.calibrator.finished:
                found = self.calibrator.result()
                self.calibration = found.to_dict()
                self._start(found.radius)
            return []
        self.transcoder.step()
        if not self.transcoder.finished:
            return []
        return self._finish()

    def result(self) -> DctResult:
        t = self.transcoder
        return DctResult(
            vectors=self.vectors,
            outputs=t.U[t.order] if t is not None and self.records else torch.zeros(0, 0),
            records=list(self.records),
            source=self.source,
            target=self.target,
            radius=float(self.radius or 0.0),
            residual_norm=self.residual_norm,
            calibration=self.calibration,
            seconds=time.perf_counter() - self.began,
            settings=self.spec.to_dict(),
        )

    def _start(self, radius: float) -> None:
        spec = self.spec
        self.transcoder = Transcoder(
            self.response,
            n_factors=spec.n_vectors,
            radius=radius,
            iterations=spec.steps if spec.steps is not None else ITERATIONS,
            batch_size=spec.batch_size,
            projection=spec.projection,
            seed=spec.seed,
            beta=spec.beta,
            device=self.device,
        )

    def _finish(self) -> list[DctRecord]:
        t = self.transcoder
        assert t is not None
        cos = F.cosine_similarity(t.V, t.V0, dim=1)
        for rank, j in enumerate(t.order.tolist()):
            self.records.append(
                DctRecord(
                    index=rank,
                    objective=float(t.effect[j]),
                    alpha=float(t.alpha[j]),
                    score=float(t.alpha[j] ** 2),
                    curve=t.curves[j],
                    steps=t.iterations,
                    start_cosine=float(cos[j]),
                )
            )
        self.vectors = (t.radius * t.V[t.order]).float()
        return list(self.records)


def train_dct(lm: LoadedModel, spec: DctSpec, *, on_progress: ProgressFn | None = None) -> DctResult:
    """Run DCT to the end: its vectors by α², largest first."""
    trainer = DctTrainer(lm, spec)
    while not trainer.finished:
        trainer.step()
        if on_progress is not None:
            on_progress(trainer.phase, trainer.progress())
    return trainer.result()
