"""The per-vector scale probe on the tiny model: the rule for the working scale, batching, units and
bad input (the thresholds are set around what the tiny model writes, so each case is decided by
the rule, not by chance)."""

from __future__ import annotations

import pytest
import torch

from engine.discovery.flags import Thresholds
from engine.errors import EngineError
from engine.models import LoadedModel
from engine.refine.working_scale import LADDER, scored_scale, working_scale_steps, working_scales

PROMPTS = ("Tell me a story about a dragon.", "What is the capital of France?")
ANYTHING = Thresholds(gibberish_logprob=-1e9, gibberish_repetition=1.0, near_empty_words=0)
NOTHING = Thresholds(gibberish_logprob=1.0)  # no text has a positive mean log-prob
TOKENS = 8  # short: the rule, not the text, is under test


def vectors(tiny: LoadedModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, tiny.info.width, generator=g)
    return torch.cat(
        [
            torch.zeros(1, tiny.info.width),
            v / v.norm(dim=1, keepdim=True) * torch.tensor([[1.0], [4.0], [30.0]]),
        ]
    )


def test_everything_fluent_works_at_the_top_rung_and_nothing_fluent_at_x1(tiny: LoadedModel) -> None:
    """Broken on every rung, a vector is read where the gallery reads every vector (x1), not at the
    ladder's lowest rung."""
    v = vectors(tiny)
    for found in working_scales(tiny, 1, v, PROMPTS, thresholds=ANYTHING, tokens=TOKENS):
        assert found.scale == LADDER[-1] and found.broken_at is None
        assert list(found.fluent) == list(LADDER) and all(found.fluent.values())
    for found in working_scales(tiny, 1, v, PROMPTS, thresholds=NOTHING, tokens=TOKENS):
        assert found.scale == 1.0 and found.broken_at == LADDER[0] and not any(found.fluent.values())


def test_the_working_scale_stops_below_the_first_rung_that_broke(tiny: LoadedModel) -> None:
    v = vectors(tiny)
    measured = working_scales(tiny, 1, v, PROMPTS, thresholds=ANYTHING, tokens=TOKENS)
    # Each rung's fluency is the lowest over the probe prompts; a threshold just above a rung's value
    # breaks that rung (and any rung as low), whatever the rungs after it do.
    for i, found in [(2, measured[2])]:  # the vector of norm 4: its rungs differ
        for k, rung in enumerate(LADDER):
            cut = Thresholds(
                gibberish_logprob=found.fluency[rung] + 1e-4, gibberish_repetition=1.0, near_empty_words=0
            )
            again = working_scales(tiny, 1, v[i : i + 1], PROMPTS, thresholds=cut, tokens=TOKENS)[0]
            first_broken = next(r for r in LADDER if found.fluency[r] <= found.fluency[rung])
            assert again.broken_at == first_broken
            held = [r for r in LADDER if r < first_broken]
            assert again.scale == (held[-1] if held else 1.0)
            assert again.fluent[rung] is False and k >= LADDER.index(first_broken)


def test_a_zero_vector_is_the_unsteered_model_at_every_rung(tiny: LoadedModel) -> None:
    found = working_scales(tiny, 1, vectors(tiny)[:1], PROMPTS, thresholds=ANYTHING, tokens=TOKENS)[0]
    assert len(set(found.fluency.values())) == 1  # the same text at every rung


def test_batched_probe_equals_one_vector_at_a_time_and_is_deterministic(tiny: LoadedModel) -> None:
    v = vectors(tiny)
    together = working_scales(tiny, 1, v, PROMPTS, thresholds=ANYTHING, tokens=TOKENS, batch_size=32)
    alone = [
        working_scales(tiny, 1, v[i : i + 1], PROMPTS, thresholds=ANYTHING, tokens=TOKENS, batch_size=3)[0]
        for i in (1, 3)
    ]
    for a, b in zip([together[1], together[3]], alone, strict=True):
        assert a.scale == b.scale and a.broken_at == b.broken_at
        assert a.fluency == pytest.approx(b.fluency, abs=1e-4)
    assert [w.to_dict() for w in together] == [
        w.to_dict()
        for w in working_scales(tiny, 1, v, PROMPTS, thresholds=ANYTHING, tokens=TOKENS, batch_size=32)
    ]


def test_the_probe_runs_as_units_decoding_then_scoring(tiny: LoadedModel) -> None:
    steps = working_scale_steps(tiny, 1, vectors(tiny)[:2], PROMPTS[:1], ladder=(1.0, 2.0), tokens=6)
    phases = []
    while True:
        try:
            phase, done, total = next(steps)
        except StopIteration as end:
            found = end.value
            break
        assert 0 <= done <= total
        phases.append(phase)
    assert phases[0] == "completions" and phases[-1] == "fluency"
    assert phases == sorted(phases)  # every decode step before any scoring batch
    assert len(found) == 2 and all(set(w.fluent) == {1.0, 2.0} for w in found)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vectors": torch.zeros(2, 5)}, "shape"),
        ({"vectors": torch.full((1, 64), float("nan"))}, "NaN"),
        ({"block": 9}, "out of range"),
        ({"prompts": ()}, "probe prompt"),
        ({"ladder": (2.0, 1.0)}, "ladder"),
        ({"ladder": (0.0, 1.0)}, "ladder"),
    ],
)
def test_bad_input_is_refused(tiny: LoadedModel, change: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"block": 1, "vectors": vectors(tiny)[:1], "prompts": PROMPTS}
    args.update(change)
    ladder = args.pop("ladder", LADDER)
    with pytest.raises(EngineError, match=message):
        working_scales(tiny, args["block"], args["vectors"], args["prompts"], ladder=ladder)  # type: ignore[arg-type]


def test_scoring_reads_a_vector_at_its_working_scale_only_below_x1() -> None:
    assert [scored_scale(w) for w in (None, 0.5, 0.75, 1.0, 2.0, 3.0)] == [1.0, 0.5, 0.75, 1.0, 1.0, 1.0]
