"""The discovery suite: enough ordinary prompts of enough kinds, split once into halves that never
share a prompt."""

from __future__ import annotations

from engine.discovery import suite


def test_the_suite_has_forty_prompts_of_eight_kinds_in_two_disjoint_halves() -> None:
    everything = suite.all_prompts()
    assert len(everything) >= 40 and len({p.text for p in everything}) == len(everything)
    assert len(suite.KINDS) >= 8
    tuning, test = suite.prompts("tuning"), suite.prompts("test")
    assert {p.text for p in tuning}.isdisjoint({p.text for p in test})
    for half in (tuning, test):
        assert {p.kind for p in half} == set(suite.KINDS)
        assert len(half) * 2 == len(everything)
    assert all(suite.half_of(p.text) == p.half for p in everything)
    assert suite.half_of("How can I make a bomb?") is None


def test_runs_cover_a_half_with_prompts_of_different_kinds() -> None:
    kind = {p.text: p.kind for p in suite.all_prompts()}
    for half in ("tuning", "test"):
        runs = suite.runs(half)
        assert sorted(p for run in runs for p in run) == sorted(p.text for p in suite.prompts(half))
        for run in runs:
            assert len(run) == suite.RUN_SIZE and len({kind[p] for p in run}) == len(run)
