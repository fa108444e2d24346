"""MELBO's default R: a share of the run's residual norm, calibrated once per model and span.

A fixed share of the norm (0.08, the old default) sat at the bottom of the useful range on prompts
nobody had tuned for: few vectors changed their answers more than random vectors of the same norm
did. The share is now measured per model: the nonlinearity-ratio calibration (engine/methods/
calibrate.py) finds the R at which random vectors at the source stop moving the target linearly,
on fixed ordinary prompts (the discovery suite's tuning half); that R, times MULTIPLE and divided
by those prompts' median residual norm, is the share. A run's R is the share times its own
prompts' median residual norm.

The share depends on the model, the source and target blocks and the target positions only (fixed
prompts, fixed directions, fixed seed), so a learned run and its random twin get the same R, and a
caller may compute it once and pass it as `radius_fraction`. It is cached in this process per
loaded model. THRESHOLD and MULTIPLE were chosen on the suite's tuning half with bench/yield.py
(docs/benchmarks.md has the comparison).
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from engine.discovery.suite import prompts as suite_prompts
from engine.errors import EngineError
from engine.methods.calibrate import Calibrator
from engine.models import LoadedModel
from engine.specs import CalibrateSpec

THRESHOLD = 0.5  # nonlinearity ratio of the calibration
# The default R is this multiple of the calibrated R. On the tuning half, x1 left half of the learned
# completions gibberish, x0.5 none beyond random; x0.7 kept the most changed-and-fluent beyond random.
# x0.6 did a little better on ordinary prompts but found the organism's planted behaviour less often
# (bench/discovery.py, below its target on both builds of the organism measured), so it is not the default.
MULTIPLE = 0.7
DIRECTIONS = 16  # random directions averaged over (the ratio is smooth in R; 16 give it within a few %)
SEED = 0  # fixed: every run of a model, whatever its own seed, gets the same share
FALLBACK_SHARE = 0.08  # when the calibration finds no R (a response linear or broken throughout)
CALIBRATION_PROMPTS = 8  # the first tuning-half prompts: one of each kind


@dataclass(frozen=True)
class DefaultShare:
    """The default R as a share of the residual norm, and where it came from."""

    share: float
    source: int
    target: int
    positions: str
    threshold: float
    multiple: float
    calibrated_radius: float | None  # on the calibration prompts (None: fallback)
    calibration_norm: float | None  # their median residual norm at the source
    ratio: float | None  # the nonlinearity ratio measured at the calibrated R
    fallback: str = ""  # why the fixed fallback share was used ("" when calibrated)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int, str], DefaultShare]] = (
    weakref.WeakKeyDictionary()
)


def calibration_prompts() -> tuple[str, ...]:
    return tuple(p.text for p in suite_prompts("tuning")[:CALIBRATION_PROMPTS])


def cached_share(lm: LoadedModel, source: int, target: int, positions: str) -> DefaultShare | None:
    return _CACHE.get(lm.model, {}).get((source, target, positions))


class ShareCalibrator:
    """The default share one calibration probe per `step()` (nothing to do when it is cached).

    The calibration's set-up (activations of its prompts, the Jacobian probe) runs in the first
    step, not in the constructor, so constructing a trainer stays cheap.
    """

    def __init__(self, lm: LoadedModel, source: int, target: int, positions: str) -> None:
        self.lm, self.key = lm, (source, target, positions)
        self.found = cached_share(lm, source, target, positions)
        self.calibrator: Calibrator | None = None

    @property
    def finished(self) -> bool:
        return self.found is not None

    def step(self) -> None:
        if self.found is not None:
            return
        try:
            if self.calibrator is None:
                source, target, positions = self.key
                spec = CalibrateSpec(
                    prompts=calibration_prompts(),
                    model="default",
                    source=source,
                    target=target,
                    positions=positions,
                    directions=DIRECTIONS,
                    threshold=THRESHOLD,
                    seed=SEED,
                )
                self.calibrator = Calibrator(self.lm, spec)
                return
            self.calibrator.step()
            if self.calibrator.finished:
                result = self.calibrator.result()
                self._keep(MULTIPLE * result.relative, result.radius, result.residual_norm, result.ratio, "")
        except EngineError as exc:  # no R where the ratio crosses: keep runs working on the old share
            self._keep(FALLBACK_SHARE, None, None, None, str(exc))

    def result(self) -> DefaultShare:
        while self.found is None:
            self.step()
        return self.found

    def _keep(
        self, share: float, radius: float | None, norm: float | None, ratio: float | None, why: str
    ) -> None:
        source, target, positions = self.key
        self.found = DefaultShare(
            share=share,
            source=source,
            target=target,
            positions=positions,
            threshold=THRESHOLD,
            multiple=MULTIPLE,
            calibrated_radius=radius,
            calibration_norm=norm,
            ratio=ratio,
            fallback=why,
        )
        _CACHE.setdefault(self.lm.model, {})[self.key] = self.found


def default_share(lm: LoadedModel, source: int, target: int, positions: str) -> DefaultShare:
    """The default R of a MELBO run at these blocks and positions, as a share of its residual norm."""
    return ShareCalibrator(lm, source, target, positions).result()
