"""The search around a vector on the tiny model: elitist (never below its start), within its budget,
and its scores are the detector's on the completions generation gives."""

from __future__ import annotations

import pytest
import torch

from engine.decode.generate import GenerationRequest, generate
from engine.discovery.detectors import Detector, detect
from engine.errors import EngineError
from engine.models import LoadedModel
from engine.refine.search import SearchResult, perturb, search, search_steps
from engine.refine.specs import MAX_BUDGET, SearchSpec

PROMPTS = ("Tell me a story.", "What is two plus two?")
TOKENS = 8


@pytest.fixture(scope="module")
def start() -> torch.Tensor:
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    return v / v.norm() * 4


def spec(**changes: object) -> SearchSpec:
    values: dict[str, object] = {
        "prompts": PROMPTS,
        "block": 1,
        "pattern": "t",  # the tiny model's start writes bytes; some neighbours write "atat", "tttt"
        "sigma": 1.0,
        "population": 4,
        "budget": 10,
        "max_new_tokens": TOKENS,
    }
    return SearchSpec.from_dict({**values, **changes})


@pytest.fixture(scope="module")
def found(tiny: LoadedModel, start: torch.Tensor) -> SearchResult:
    return search(tiny, start, spec())


def completions(tiny: LoadedModel, vector: torch.Tensor) -> list[str]:
    rows = [
        GenerationRequest(prompt=p, block=1, terms=((vector, 1.0),), max_new_tokens=TOKENS) for p in PROMPTS
    ]
    return [r.text for r in generate(tiny, rows)]


def test_it_finds_a_stronger_vector_and_never_returns_a_weaker_one(
    tiny: LoadedModel, start: torch.Tensor, found: SearchResult
) -> None:
    assert found.start.generation == 0 and torch.equal(found.start.vector, start)
    assert found.best[0].score > found.start.score  # the pattern is there to be found
    assert all(c.score >= found.start.score for c in found.best)
    assert [c.score for c in found.best] == sorted((c.score for c in found.best), reverse=True)
    for c in found.best:  # each score is the detector's, on what generation gives
        texts = completions(tiny, c.vector)
        assert c.texts == texts
        assert c.scores == detect(Detector("regex", "t"), texts)
        assert float(c.vector.norm()) == pytest.approx(float(start.norm()), rel=1e-5)  # same norm


def test_the_budget_bounds_the_candidates(found: SearchResult) -> None:
    assert found.tried == 10
    assert [g["tried"] for g in found.generations] == [0, 4, 8, 10]  # the last generation is cut to fit
    bests = [g["best"] for g in found.generations]
    assert bests == sorted(bests) and bests[-1] == found.best[0].score  # best so far never falls
    assert all(g["max"] <= g["best"] for g in found.generations)


def test_nothing_better_returns_the_start(tiny: LoadedModel, start: torch.Tensor) -> None:
    none = search(tiny, start, spec(pattern="(?!)", budget=4))  # matches nothing
    assert [c.generation for c in none.best] == [0] and none.best[0].score == 0.0


def test_a_judge_detector(tiny: LoadedModel, start: torch.Tensor) -> None:
    judged = search(tiny, start, spec(detector="judge", pattern="Is this a story?", budget=2, population=2))
    assert judged.tried == 2
    assert all(0.0 <= s <= 1.0 for c in judged.best for s in c.scores)
    assert judged.best[0].score >= judged.start.score


def test_perturbations_keep_the_norm(start: torch.Tensor) -> None:
    moved = perturb(start, 5, 0.3, torch.Generator().manual_seed(1))
    assert moved.norm(dim=1).tolist() == pytest.approx([4.0] * 5, rel=1e-5)
    cosines = moved @ start / 16
    assert bool((cosines < 1 - 1e-4).all()) and bool((cosines > 0.9).all())  # near, not on it


def test_units_and_bad_input(tiny: LoadedModel, start: torch.Tensor) -> None:
    steps = search_steps(tiny, start, spec(budget=2, population=2))
    phases = set()
    while True:
        try:
            phases.add(next(steps)[0])
        except StopIteration:
            break
    assert phases == {"completions"}
    for bad in ({"budget": MAX_BUDGET + 1}, {"budget": 0}, {"population": 0}, {"sigma": 0}, {"pattern": " "}):
        with pytest.raises(EngineError):
            spec(**bad)
    with pytest.raises(EngineError, match="regular expression"):
        search(tiny, start, spec(pattern="("))
    with pytest.raises(EngineError, match="block 7"):
        search(tiny, start, spec(block=7))
