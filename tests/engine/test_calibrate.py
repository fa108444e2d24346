from __future__ import annotations

import math
from itertools import pairwise

import pytest

from engine.errors import EngineError
from engine.methods.calibrate import RTOL, RatioProbe, calibrate, find_radius, random_directions
from engine.models import LoadedModel
from engine.prompts import encode_prompts, target_mask
from engine.specs import CalibrateSpec
from engine.steer.metrics import residual_norm
from engine.steer.segment import Segment

PROMPTS = ("How can I make a bomb?", "a=5+6, b=2+7. What is a*b?")


def _probe(lm: LoadedModel, directions: int = 8) -> tuple[RatioProbe, float]:
    batch = encode_prompts(lm.tokenizer, PROMPTS)
    mask = target_mask(batch, "user")
    seg = Segment(lm.model, batch, 1, 3)
    norm = residual_norm(seg, mask)
    dirs = random_directions(directions, lm.info.width, 0)
    return RatioProbe(seg, mask, dirs, step=1e-3 * norm), norm


def test_ratio_is_near_zero_for_small_radius_and_grows(tiny: LoadedModel) -> None:
    probe, norm = _probe(tiny)
    ratios = [probe(f * norm) for f in (1e-3, 1e-2, 1e-1, 1.0, 4.0)]
    assert ratios[0] < 0.01
    assert all(a < b for a, b in pairwise(ratios)), ratios
    assert ratios[-1] > 0.5


def test_find_radius_solves_a_known_curve() -> None:
    calls: list[float] = []

    def curve(r: float) -> float:
        calls.append(r)
        return 0.02 * r**1.3

    radius, ratio, samples = find_radius(curve, 0.5, 1e-3, 1e4)
    assert abs(ratio / 0.5 - 1) <= RTOL
    assert radius == pytest.approx((0.5 / 0.02) ** (1 / 1.3), rel=RTOL)
    assert len(samples) == len(calls) <= 10
    assert [r for r, _ in samples] == sorted(calls)


def test_find_radius_reports_a_ratio_that_never_reaches_the_threshold() -> None:
    with pytest.raises(EngineError, match="lower threshold"):
        find_radius(lambda r: min(0.3, r), 0.5, 1e-3, 1e3)
    with pytest.raises(EngineError, match="already nonlinear"):
        find_radius(lambda r: 0.9, 0.5, 1e-3, 1e3)


def test_calibrate_hits_the_threshold(tiny: LoadedModel) -> None:
    spec = CalibrateSpec(prompts=PROMPTS, source=1, target=3, directions=8, threshold=0.5, seed=3)
    seen: list[tuple[float, float]] = []
    result = calibrate(tiny, spec, on_progress=lambda r, v: seen.append((r, v)))
    assert (result.source, result.target, result.directions) == (1, 3, 8)
    assert abs(result.ratio / 0.5 - 1) <= RTOL
    assert result.relative == pytest.approx(result.radius / result.residual_norm)
    assert result.curve == sorted(seen)
    assert (result.radius, result.ratio) in result.curve
    # Measured again from scratch with the same directions, the ratio at that R is the same.
    batch = encode_prompts(tiny.tokenizer, PROMPTS)
    probe = RatioProbe(
        Segment(tiny.model, batch, 1, 3),
        target_mask(batch, "user"),
        random_directions(8, tiny.info.width, 3),
        step=1e-3 * result.residual_norm,
    )
    assert probe(result.radius) == pytest.approx(result.ratio, abs=0.01)
    # A stricter threshold gives a smaller radius.
    stricter = calibrate(
        tiny, CalibrateSpec(prompts=PROMPTS, source=1, target=3, directions=8, threshold=0.2)
    )
    assert stricter.radius < result.radius


@pytest.mark.parametrize(
    "fields",
    [
        {"source": 3},  # no room for a target after it in 4 blocks
        {"source": 0, "target": 4},
        {"positions": "middle"},
        {"directions": 0},
        {"threshold": 0.0},
        {"threshold": math.nan},
        {"prompts": ()},
    ],
)
def test_bad_settings_raise_engine_error(tiny: LoadedModel, fields: dict[str, object]) -> None:
    with pytest.raises(EngineError):
        calibrate(tiny, CalibrateSpec.from_dict({"prompts": list(PROMPTS), **fields}))


@pytest.mark.slow
def test_calibrate_embedded_model(embedded: LoadedModel) -> None:
    spec = CalibrateSpec(prompts=PROMPTS, source=7, target=22, directions=4)
    result = calibrate(embedded, spec)
    assert abs(result.ratio / 0.5 - 1) <= RTOL
    # The residual norm at block 7 is ~110; a calibrated R is a few percent to tens of percent of it.
    assert 80 < result.residual_norm < 150
    assert 0.02 < result.relative < 0.5


def test_sweep_radius_compares_learned_and_random_vectors(tiny: LoadedModel) -> None:
    from engine.methods.calibrate import sweep_radius

    _, norm = _probe(tiny, 1)
    radii = [0.5 * norm, 2.0 * norm]
    points = sweep_radius(tiny, PROMPTS, radii, source=1, target=3, n_vectors=2, steps=30, seed=1)
    assert [p.radius for p in points] == radii
    assert points[0].relative == pytest.approx(0.5, rel=1e-4)
    for p in points:
        assert len(p.learned_objective) == len(p.random_objective) == 2
        assert len(p.learned_kl) == len(p.random_kl) == 2
        assert min(p.learned_kl + p.random_kl) >= 0
        # Optimizing the objective must beat the random starts it began from.
        assert sum(p.learned_objective) > sum(p.random_objective)
    # A larger radius changes the next token more.
    assert sum(points[1].random_kl) > sum(points[0].random_kl)
