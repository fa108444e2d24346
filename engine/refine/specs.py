"""Specs of refining a stored vector (handed in alongside each): its R-path, training it on more
prompts, and a search around it for a stronger version of what a detector sees.

Kept apart from engine/specs.py (the run specs) so each file stays one size a person reads; they
share its checks and its JSON coercion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from engine.errors import EngineError
from engine.models import ModelInfo
from engine.prompts import MELBO_POSITIONS
from engine.specs import (
    MAX_NEW_TOKENS,
    MelboSpec,
    _finite_positive,
    _int_range,
    _positions,
    _prompts,
    _span,
    _Spec,
)

DEFAULT_MULTIPLES = (0.5, 0.75, 1.0, 1.5, 2.0)  # × the vector's R
MAX_MULTIPLES = 16
MAX_MULTIPLE = 100.0
MAX_BUDGET = 512  # perturbed vectors one search may try (each completes every prompt)
MAX_POPULATION = 64
# A warm start sits near an optimum: a quarter of fast MELBO's step (engine/methods/melbo.py FAST_ANGLE) keeps
# it in that basin (full steps turn a converged vector on the tiny model by about 40° at its own R).
WARM_ANGLE = 0.02


@dataclass(frozen=True)
class _Retrain(_Spec):
    """Training a stored vector further with MELBO's objective (fast mode, one vector, warm start)."""

    prompts: tuple[str, ...]
    source: int  # the block the vector steers
    model: str = "default"
    target: int | None = None  # hidden_states index the objective reads; None: L - 8
    radius: float | None = None  # R; None: the vector's own norm
    p: float = 2.0
    q: float | None = None  # None: q = p
    steps: int | None = None  # None: fast mode's budget (it stops once converged)
    lr: float | None = None  # None: about WARM_ANGLE radians a step (it starts near an optimum)
    positions: str = MELBO_POSITIONS  # user | prompt | all | last:k; the app passes the run's
    loss: Literal["token", "reference"] = "token"
    normalize: bool = False

    def __post_init__(self) -> None:
        _prompts(self.prompts)
        _finite_positive("R (radius)", self.radius)
        _finite_positive("p", self.p, allow_none=False)
        _finite_positive("q", self.q)
        _finite_positive("lr", self.lr)
        _positions(self.positions)
        if self.steps is not None:
            _int_range("steps", self.steps, 0, 20_000)
        if self.loss not in ("token", "reference"):
            raise EngineError(f"loss must be one of token, reference, got {self.loss!r}")

    def span(self, info: ModelInfo) -> tuple[int, int]:
        return _span(info, self.source, self.target)

    def melbo(self, radius: float, width: int, prompts: tuple[str, ...] | None = None) -> MelboSpec:
        """The MELBO run that trains one vector at `radius` (on `prompts`, default the spec's) in a
        model of this width."""
        lr = self.lr if self.lr is not None else WARM_ANGLE * radius / math.sqrt(width)
        return MelboSpec(
            prompts=prompts or self.prompts,
            model=self.model,
            source=self.source,
            target=self.target,
            radius=radius,
            p=self.p,
            q=self.q,
            n_vectors=1,
            steps=self.steps,
            lr=lr,
            positions=self.positions,
            loss=self.loss,
            normalize=self.normalize,
            orthogonal=False,
            batch_size=1,
        )


@dataclass(frozen=True)
class RPathSpec(_Retrain):
    """The vector trained again from itself at each multiple of R (engine/refine/rpath.py)."""

    multiples: tuple[float, ...] = DEFAULT_MULTIPLES  # × R

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= len(self.multiples) <= MAX_MULTIPLES:
            raise EngineError(f"give between 1 and {MAX_MULTIPLES} multiples of R, got {len(self.multiples)}")
        for m in self.multiples:
            if not math.isfinite(m) or not 0 < m <= MAX_MULTIPLE:
                raise EngineError(f"multiples of R must be numbers > 0 and at most {MAX_MULTIPLE:g}, got {m}")
        if len(set(self.multiples)) < len(self.multiples):
            raise EngineError("each multiple of R may be given once")


@dataclass(frozen=True)
class GeneralizeSpec(_Retrain):
    """The vector trained further on `prompts`, then compared before and after on `held_out`
    (engine/refine/generalize.py)."""

    held_out: tuple[str, ...] = ()  # prompts it is compared on (not trained on)
    max_new_tokens: int = 48  # per held-out completion

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.held_out:
            raise EngineError("give at least one held-out prompt to compare on")
        _prompts(self.held_out)
        _int_range("max new tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)


@dataclass(frozen=True)
class SearchSpec(_Spec):
    """An evolution strategy around the vector for completions a detector scores higher
    (engine/refine/search.py)."""

    prompts: tuple[str, ...]
    block: int  # the block the vector steers
    pattern: str  # the regular expression, or the judge's yes/no question
    model: str = "default"
    detector: Literal["regex", "judge"] = "regex"  # judge: asked of the same model
    budget: int = 32  # perturbed vectors tried in all
    population: int = 8  # perturbed vectors tried per generation
    sigma: float = 0.3  # perturbation norm as a share of the vector's (then back to its norm)
    keep: int = 3  # best vectors returned (the start among them until that many beat it)
    max_new_tokens: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        _prompts(self.prompts)
        if self.detector not in ("regex", "judge"):
            raise EngineError(f"the detector is a regex or a judge, got {self.detector!r}")
        if not self.pattern.strip():
            raise EngineError("the detector's pattern or question is empty")
        _int_range("budget", self.budget, 1, MAX_BUDGET)
        _int_range("population", self.population, 1, MAX_POPULATION)
        if not math.isfinite(self.sigma) or not 0 < self.sigma <= 10:
            raise EngineError(f"sigma must be a number > 0 and at most 10, got {self.sigma}")
        _int_range("vectors kept", self.keep, 1, 16)
        _int_range("max new tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        if not 0 <= self.seed < 2**63:
            raise EngineError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")

    def check_block(self, info: ModelInfo) -> None:
        if not 0 <= self.block < info.n_blocks:
            raise EngineError(
                f"block {self.block} is out of range: the model has blocks 0..{info.n_blocks - 1}"
            )
