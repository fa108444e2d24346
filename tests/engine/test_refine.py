"""The scale sweep on the tiny model: completions as generation gives them, scores as scoring gives
them, KL zero at scale 0, and the two markers where the flags put them."""

from __future__ import annotations

import math

import pytest
import torch

from engine.decode.generate import GenerationRequest, generate
from engine.discovery.embedder import Embedder
from engine.discovery.flags import Thresholds
from engine.discovery.scores import ScoreInput, score
from engine.errors import EngineError
from engine.models import LoadedModel
from engine.refine.scale_sweep import ScaleSweep, scale_sweep, scale_sweep_steps
from engine.specs import DEFAULT_SCALES, MAX_SCALES, ScaleSweepSpec

PROMPTS = ("Tell me a story.", "What is two plus two?", "Name a colour.")
SCALES = (0.0, 0.5, 2.0, -1.0, 8.0)
TOKENS = 8
NEVER_GIBBERISH = Thresholds(gibberish_logprob=-1e9, gibberish_repetition=2.0, near_empty_words=0)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def vector() -> torch.Tensor:
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    return v / v.norm() * 4


def spec(**changes: object) -> ScaleSweepSpec:
    values: dict[str, object] = {"prompts": PROMPTS, "block": 1, "scales": SCALES, "max_new_tokens": TOKENS}
    return ScaleSweepSpec.from_dict({**values, **changes})


@pytest.fixture(scope="module")
def swept(tiny: LoadedModel, embedder: Embedder, vector: torch.Tensor) -> ScaleSweep:
    return scale_sweep(tiny, embedder, vector, spec())


def expected_marker(sweep: ScaleSweep, which: str) -> float | None:
    hits = [p.scale for p in sweep.points if getattr(p, which)]
    return min(hits, key=lambda s: (abs(s), s < 0)) if hits else None


def test_completions_are_what_generation_gives(
    tiny: LoadedModel, swept: ScaleSweep, vector: torch.Tensor
) -> None:
    assert [c.prompt for c in swept.completions] == [p for p in PROMPTS for _ in SCALES]
    assert [c.scale for c in swept.completions] == list(SCALES) * len(PROMPTS)
    requests = [
        GenerationRequest(prompt=c.prompt, block=1, terms=((vector, c.scale),), max_new_tokens=TOKENS)
        for c in swept.completions
    ]
    assert [c.result.text for c in swept.completions] == [r.text for r in generate(tiny, requests)]
    plain = generate(tiny, [GenerationRequest(prompt=p, max_new_tokens=TOKENS) for p in PROMPTS])
    assert [r.text for r in swept.unsteered] == [r.text for r in plain]


def test_scores_are_the_scoring_engines(tiny: LoadedModel, embedder: Embedder, swept: ScaleSweep) -> None:
    by_prompt = dict(zip(PROMPTS, swept.unsteered, strict=True))
    inputs = [ScoreInput(c.prompt, c.result.text, by_prompt[c.prompt].text) for c in swept.completions]
    direct = score(tiny, embedder, inputs)
    assert [c.scores.flag for c in swept.completions] == [s.flag for s in direct]
    assert [c.scores.effect for c in swept.completions] == pytest.approx([s.effect for s in direct], abs=1e-5)
    for k, point in enumerate(swept.points):
        mine = direct[k :: len(SCALES)]
        assert point.scale == SCALES[k]
        assert point.effect == pytest.approx(sum(s.effect for s in mine) / len(mine), abs=1e-5)
        assert point.fluency == pytest.approx(sum(s.fluency for s in mine) / len(mine), abs=1e-4)
        assert sum(point.flags.values()) == len(PROMPTS)


def test_scale_zero_is_the_unsteered_model(swept: ScaleSweep) -> None:
    zero = swept.points[SCALES.index(0.0)]
    assert zero.kl == pytest.approx(0.0, abs=1e-6)
    assert zero.effect == 0.0 and zero.flags == {"unchanged": len(PROMPTS)} and not zero.changed
    at_zero = [c for c in swept.completions if c.scale == 0.0]
    assert [c.result.text for c in at_zero] == [u.text for u in swept.unsteered]
    # Steering moves the next-token distribution, further the harder it pushes.
    assert all(p.kl > 1e-6 for p in swept.points if p.scale != 0.0)
    kls = {p.scale: p.kl for p in swept.points}
    assert kls[8.0] > kls[0.5]


def test_markers_follow_the_flags(swept: ScaleSweep) -> None:
    for point in swept.points:
        n = sum(point.flags.values())
        assert point.changed == (2 * (n - point.flags.get("unchanged", 0)) > n)
        assert point.broken == (2 * point.flags.get("gibberish", 0) > n)
    assert swept.first_change == expected_marker(swept, "changed")
    assert swept.breaks == expected_marker(swept, "broken")
    assert swept.first_change is not None  # a random vector at 0.5 × norm 4 moves the tiny model


def test_markers_move_with_the_thresholds(
    tiny: LoadedModel, embedder: Embedder, vector: torch.Tensor
) -> None:
    # Nothing can count as changed: neither marker is set.
    still = scale_sweep(tiny, embedder, vector, spec(), thresholds=Thresholds(unchanged_effect=2.0))
    assert (still.first_change, still.breaks) == (None, None)
    assert all(p.flags == {"unchanged": len(PROMPTS)} for p in still.points)
    # Nothing can count as gibberish: the sweep changes the answers but never breaks.
    fluent = scale_sweep(tiny, embedder, vector, spec(), thresholds=NEVER_GIBBERISH)
    assert fluent.breaks is None and fluent.first_change == expected_marker(fluent, "changed")
    assert not any(p.flags.get("gibberish") for p in fluent.points)


def test_units_come_in_phases_with_honest_counts(
    tiny: LoadedModel, embedder: Embedder, vector: torch.Tensor
) -> None:
    steps = scale_sweep_steps(tiny, embedder, vector, spec(scales=(0.0, 1.0)))
    seen: list[tuple[str, int, int]] = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as end:
            result = end.value
            break
    phases = [phase for phase, _, _ in seen]
    assert phases == sorted(phases, key=["completions", "kl", "scoring"].index)
    assert set(phases) == {"completions", "kl", "scoring"}
    assert all(0 <= done <= total for _, done, total in seen)
    # Scale 0 is not decoded twice: the unsteered completions and the vector at scale 1.
    assert [t for p, d, t in seen if p == "completions"][-1] == 2 * len(PROMPTS)
    assert [p.scale for p in result.points] == [0.0, 1.0]


def test_default_scales_run_from_zero_to_three() -> None:
    assert DEFAULT_SCALES[0] == 0.0 and DEFAULT_SCALES[-1] == 3.0 and len(DEFAULT_SCALES) == 13
    assert ScaleSweepSpec(prompts=("hi",), block=0).scales == DEFAULT_SCALES


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scales": [float(i) for i in range(MAX_SCALES + 1)]}, "between 1 and"),
        ({"scales": []}, "between 1 and"),
        ({"scales": [1.0, math.inf]}, "finite"),
        ({"scales": [math.nan]}, "finite"),
        ({"scales": [1e6]}, "finite numbers from"),
        ({"scales": [1.0, 1.0]}, "once"),
        ({"prompts": []}, "at least one prompt"),
        ({"max_new_tokens": 0}, "max new tokens"),
    ],
)
def test_bad_specs_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(EngineError, match=message):
        spec(**changes)


def test_bad_vectors_and_blocks_are_refused(
    tiny: LoadedModel, embedder: Embedder, vector: torch.Tensor
) -> None:
    with pytest.raises(EngineError, match="needs"):
        scale_sweep(tiny, embedder, torch.ones(32), spec())
    with pytest.raises(EngineError, match="NaN"):
        scale_sweep(tiny, embedder, torch.full((64,), math.nan), spec())
    with pytest.raises(EngineError, match="out of range"):
        scale_sweep(tiny, embedder, vector, spec(block=4))


def test_the_sweep_is_json_able(swept: ScaleSweep) -> None:
    import json

    data = json.loads(json.dumps(swept.to_dict()))
    assert [p["scale"] for p in data["points"]] == list(SCALES)
    assert len(data["completions"]) == len(PROMPTS) * len(SCALES)
    assert [u["prompt"] for u in data["unsteered"]] == list(PROMPTS)
    assert {"effect", "fluency", "repetition", "flag", "text", "n_tokens"} <= set(data["completions"][0])
    assert data["first_change"] == swept.first_change and data["breaks"] == swept.breaks
