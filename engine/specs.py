"""Job specs: the JSON-able contract between callers (CLI, web app) and the engine.

Each spec is a frozen dataclass; `from_dict` checks every field and raises EngineError with a
message written for the user. engine.validate adds the checks that need the loaded model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypeVar

from engine.errors import EngineError
from engine.models import ModelInfo
from engine.prompts import MELBO_POSITIONS

MAX_VECTORS = 1024  # vectors in one MELBO run or chain
MAX_STEPS = 20_000  # optimizer steps per vector
MAX_PROMPTS = 64
MAX_NEW_TOKENS = 2048

S = TypeVar("S", bound="_Spec")


DEEP = 16  # blocks from which a model is deep enough for the reference's source block 7


def default_source(n_blocks: int) -> int:
    """Source block from depth: 7 on models of 16 blocks or more (the reference default, e.g. on
    24-block Qwen-1.8B), a quarter of the depth on shallower ones. For MELBO on the embedded model,
    blocks 4, 10 and 13 were tried and none kept (docs/benchmarks.md, "The source block")."""
    return 7 if n_blocks >= DEEP else max(0, n_blocks // 4)


def default_target(n_blocks: int, source: int) -> int:
    """Target from depth: L - 8 (the reference default), kept at least two past the source."""
    return min(n_blocks - 1, max(source + 2, n_blocks - 8))


def _finite_positive(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or value <= 0:
        raise EngineError(f"{name} must be a finite number > 0, got {value}")


def _int_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise EngineError(f"{name} must be between {low} and {high}, got {value}")


def _positions(value: str) -> None:
    """user | prompt | all | last:k with k >= 1 (engine.prompts.target_mask reads them)."""
    if value in ("user", "prompt", "all"):
        return
    k = value.removeprefix("last:")
    if value.startswith("last:") and k.isdigit() and int(k) >= 1:
        return
    raise EngineError(f"positions must be user, prompt, all or last:k with k >= 1, got {value!r}")


def _prompts(value: tuple[str, ...]) -> None:
    if not value:
        raise EngineError("give at least one prompt")
    if len(value) > MAX_PROMPTS:
        raise EngineError(f"at most {MAX_PROMPTS} prompts, got {len(value)}")
    for p in value:
        if not p.strip():
            raise EngineError("prompts must not be empty")


@dataclass(frozen=True)
class _Spec:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise EngineError(f"unknown field(s) for {cls.__name__}: {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            values[name] = _coerce(name, known[name].type, value)
        try:
            return cls(**values)
        except TypeError as exc:
            raise EngineError(f"{cls.__name__}: {exc}") from None


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """Accept JSON values for the annotated field type, with a clear error otherwise."""
    ann = str(annotation)
    if value is None:
        if "None" in ann:
            return None
        raise EngineError(f"{name} is required")
    if "tuple[float" in ann:
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise EngineError(f"{name} must be a list of numbers")
        return tuple(float(v) for v in value)
    if "tuple[str" in ann:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise EngineError(f"{name} must be a list of strings")
        return tuple(value)
    if ann.startswith("bool"):
        if not isinstance(value, bool):
            raise EngineError(f"{name} must be true or false")
        return value
    if ann.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise EngineError(f"{name} must be an integer, got {value!r}")
        return value
    if ann.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EngineError(f"{name} must be a number, got {value!r}")
        return float(value)
    if ann.startswith("str") or ann.startswith("Literal"):
        if not isinstance(value, str):
            raise EngineError(f"{name} must be a string, got {value!r}")
        return value
    return value


def _span(info: ModelInfo, source: int | None, target: int | None) -> tuple[int, int]:
    s = default_source(info.n_blocks) if source is None else source
    t = default_target(info.n_blocks, s) if target is None else target
    if not 0 <= s < info.n_blocks:
        raise EngineError(f"source block {s} is out of range: the model has blocks 0..{info.n_blocks - 1}")
    if not s + 2 <= t <= info.n_blocks - 1:
        raise EngineError(f"target {t} must lie between source + 2 = {s + 2} and {info.n_blocks - 1}")
    return s, t


@dataclass(frozen=True)
class MelboSpec(_Spec):
    """A MELBO run: n vectors of norm R at the source block maximizing the change at the target."""

    prompts: tuple[str, ...]
    model: str = "default"
    source: int | None = None  # block whose output is steered; None: from depth
    target: int | None = None  # hidden_states index read by the objective; None: L - 8
    radius: float | None = None  # R; None: radius_fraction x median residual norm at the source
    # R as a share of that norm when radius is None; None: calibrated (engine/methods/default_radius.py)
    radius_fraction: float | None = None
    p: float = 2.0  # exponent on per-position change norms
    q: float | None = None  # outer root; None: q = p
    n_vectors: int = 8
    steps: int | None = None  # None: 100 in fast mode (may stop earlier on convergence), 300 in reference
    lr: float | None = None  # None: 1e-3 in reference mode, matched to R in fast mode
    positions: str = MELBO_POSITIONS  # user | prompt | all | last:k (engine/prompts.py says why)
    loss: Literal["token", "reference"] = "token"  # where the p-norm is taken (docs/methods.md)
    normalize: bool = False  # divide each position's change by its unsteered norm
    orthogonal: bool = True
    method: Literal["melbo", "random"] = "melbo"  # random: the 0-step baseline
    mode: Literal["fast", "reference"] = "fast"
    seed: int = 0
    batch_size: int = 16  # vectors trained together in fast mode

    def __post_init__(self) -> None:
        _prompts(self.prompts)
        _finite_positive("R (radius)", self.radius)
        _finite_positive("R as a share of the residual norm", self.radius_fraction)
        if self.radius is not None and self.radius_fraction is not None:
            raise EngineError("give R (radius) or R as a share of the residual norm, not both")
        _finite_positive("p", self.p, allow_none=False)
        _finite_positive("q", self.q)
        _finite_positive("lr", self.lr)
        _positions(self.positions)
        _int_range("number of vectors", self.n_vectors, 1, MAX_VECTORS)
        if self.steps is not None:
            _int_range("steps", self.steps, 0, MAX_STEPS)
        _int_range("batch size", self.batch_size, 1, MAX_VECTORS)
        for name, choices in (
            ("loss", ("token", "reference")),
            ("method", ("melbo", "random")),
            ("mode", ("fast", "reference")),
        ):
            if getattr(self, name) not in choices:
                raise EngineError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")

    def span(self, info: ModelInfo) -> tuple[int, int]:
        return _span(info, self.source, self.target)


@dataclass(frozen=True)
class DctSpec(_Spec):
    """A Deep Causal Transcoding run (the exponential variant): n factors learned together, each an
    input direction v at the source block and an output direction u at the target; R·v is a
    steering vector like a MELBO one (engine/methods/dct.py)."""

    prompts: tuple[str, ...]
    model: str = "default"
    source: int | None = None  # block whose output is steered; None: from depth
    target: int | None = None  # hidden_states index read; None: L - 8
    radius: float | None = None  # R; None: calibrated, where the nonlinearity ratio reaches `threshold`
    n_vectors: int = 8  # factors (at most the model's width: their input directions are orthogonalized)
    steps: int | None = None  # iterations; None: 10, the published count
    positions: str = "user"  # user | prompt | all | last:k; the change is averaged over them
    batch_size: int = 32  # factors per forward pass
    projection: int = 32  # random output directions of the Jacobian start
    threshold: float = 0.5  # calibration's nonlinearity ratio (only when R is not given)
    beta: float = 1.0  # share of each update taken (1: the published "infinite step")
    seed: int = 0

    def __post_init__(self) -> None:
        _prompts(self.prompts)
        _finite_positive("R (radius)", self.radius)
        if not 0 < self.beta <= 1:
            raise EngineError(f"beta must be in (0, 1], got {self.beta}")
        _positions(self.positions)
        _int_range("number of vectors", self.n_vectors, 1, MAX_VECTORS)
        if self.steps is not None:
            _int_range("steps (DCT iterations)", self.steps, 1, 1000)
        _int_range("batch size", self.batch_size, 1, MAX_VECTORS)
        _int_range("projection", self.projection, 1, 1024)
        if not 0 < self.threshold < 10:
            raise EngineError(f"threshold must be between 0 and 10, got {self.threshold}")

    def span(self, info: ModelInfo) -> tuple[int, int]:
        if self.n_vectors > info.width:
            raise EngineError(
                f"number of vectors must be at most the model's width ({info.width}) for DCT, whose "
                f"input directions are orthogonal; got {self.n_vectors}"
            )
        return _span(info, self.source, self.target)


@dataclass(frozen=True)
class AdapterSpec(_Spec):
    """Unsupervised steering adapters: n rank-r LoRAs on the source block's MLP output projection,
    each maximizing the MELBO objective with unit-norm factor columns (engine/methods/adapter_trainer.py)."""

    prompts: tuple[str, ...]
    model: str = "default"
    source: int | None = None  # block whose MLP output projection is adapted; None: from depth
    target: int | None = None  # hidden_states index read by the objective; None: L - 8
    radius: float | None = None  # R in W + R·B·Aᵀ; None: matched to a vector of the default norm
    rank: int = 16  # r: columns of A and B
    p: float = 2.0
    q: float | None = None
    n_vectors: int = 8  # adapters
    steps: int | None = None  # None: 100 (training stops earlier once converged)
    lr: float | None = None  # None: matched to each factor's dimension (about 0.08 rad a step)
    positions: str = "user"
    loss: Literal["token", "reference"] = "token"
    normalize: bool = False
    seed: int = 0
    batch_size: int = 8  # adapters trained together

    def __post_init__(self) -> None:
        _prompts(self.prompts)
        _finite_positive("R (radius)", self.radius)
        _finite_positive("p", self.p, allow_none=False)
        _finite_positive("q", self.q)
        _finite_positive("lr", self.lr)
        _positions(self.positions)
        _int_range("rank", self.rank, 1, 1024)
        _int_range("number of vectors", self.n_vectors, 1, MAX_VECTORS)
        if self.steps is not None:
            _int_range("steps", self.steps, 0, MAX_STEPS)
        _int_range("batch size", self.batch_size, 1, MAX_VECTORS)
        if self.loss not in ("token", "reference"):
            raise EngineError(f"loss must be one of token, reference, got {self.loss!r}")

    def span(self, info: ModelInfo) -> tuple[int, int]:
        return _span(info, self.source, self.target)


@dataclass(frozen=True)
class ChainSpec(_Spec):
    """An orthogonal chain (MELBO-ortho) from a vector theta0 given alongside the spec."""

    prompts: tuple[str, ...]
    source: int  # the block theta0 steers
    model: str = "default"
    target: int | None = None  # None: L - 8
    n_vectors: int = 8
    steps: int | None = None  # None: 1000 in reference mode; fast mode stops early
    lr: float | None = None  # None: 0.01 in reference mode, matched to |theta0| in fast mode
    loss_threshold: float | None = None  # fast mode: stop a vector's steps below this loss
    mode: Literal["fast", "reference"] = "fast"
    batch_size: int = 4  # chain vectors optimized together in fast mode
    seed: int = 0

    def __post_init__(self) -> None:
        _prompts(self.prompts)
        _int_range("number of vectors", self.n_vectors, 1, MAX_VECTORS)
        if self.steps is not None:
            _int_range("steps", self.steps, 1, MAX_STEPS)
        _finite_positive("lr", self.lr)
        _finite_positive("loss threshold", self.loss_threshold)
        _int_range("batch size", self.batch_size, 1, MAX_VECTORS)
        if self.mode not in ("fast", "reference"):
            raise EngineError(f"mode must be fast or reference, got {self.mode!r}")

    def span(self, info: ModelInfo) -> tuple[int, int]:
        return _span(info, self.source, self.target)


@dataclass(frozen=True)
class CalibrateSpec(_Spec):
    """Find R where the response to random vectors at the source stops being linear."""

    prompts: tuple[str, ...]
    model: str = "default"
    source: int | None = None
    target: int | None = None
    positions: str = "user"
    directions: int = 30  # random unit directions averaged over
    threshold: float = 0.5  # nonlinearity ratio that defines the calibrated R
    seed: int = 0

    def __post_init__(self) -> None:
        _prompts(self.prompts)
        _positions(self.positions)
        _int_range("directions", self.directions, 1, 1024)
        if not 0 < self.threshold < 10:
            raise EngineError(f"threshold must be between 0 and 10, got {self.threshold}")

    def span(self, info: ModelInfo) -> tuple[int, int]:
        return _span(info, self.source, self.target)


@dataclass(frozen=True)
class SampleSpec(_Spec):
    """Completions of the prompts under given vectors (handed in alongside) at each scale."""

    prompts: tuple[str, ...]
    model: str = "default"
    scales: tuple[float, ...] = (1.0,)
    seed: int = 0
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 48
    unsteered: bool = True  # also the unsteered completion of each prompt

    def __post_init__(self) -> None:
        _prompts(self.prompts)
        if not self.scales or len(self.scales) > 16:
            raise EngineError(f"give between 1 and 16 scales, got {len(self.scales)}")
        for scale in self.scales:
            if not math.isfinite(scale):
                raise EngineError(f"scales must be finite numbers, got {scale}")
        _int_range("max new tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise EngineError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EngineError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**63:
            raise EngineError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")


MAX_SCALES = 32  # scales in one scale sweep
MAX_SCALE = 1000.0  # |scale| bound: far past where any vector breaks a model, short of overflow
DEFAULT_SCALES = tuple(i / 4 for i in range(13))  # 0, 0.25, ..., 3 (× the vector as stored)


@dataclass(frozen=True)
class ScaleSweepSpec(_Spec):
    """A vector (handed in alongside) at each scale on the prompts: greedy completions, scores, KL."""

    prompts: tuple[str, ...]
    block: int  # the block the vector steers
    model: str = "default"
    scales: tuple[float, ...] = DEFAULT_SCALES  # multiples of the vector
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        _prompts(self.prompts)
        if not 1 <= len(self.scales) <= MAX_SCALES:
            raise EngineError(f"give between 1 and {MAX_SCALES} scales, got {len(self.scales)}")
        for scale in self.scales:
            if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
                raise EngineError(
                    f"scales must be finite numbers from -{MAX_SCALE:g} to {MAX_SCALE:g}, got {scale}"
                )
        if len(set(self.scales)) < len(self.scales):
            raise EngineError("each scale may be given once")
        _int_range("max new tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)

    def check_block(self, info: ModelInfo) -> None:
        if not 0 <= self.block < info.n_blocks:
            raise EngineError(
                f"block {self.block} is out of range: the model has blocks 0..{info.n_blocks - 1}"
            )
