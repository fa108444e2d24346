"""Generalize on the tiny model: trained further on more prompts, compared before and after on
held-out ones with the completions generation gives and the scores scoring gives."""

from __future__ import annotations

import pytest
import torch

from engine.decode.generate import GenerationRequest, generate
from engine.discovery.embedder import Embedder
from engine.discovery.scores import ScoreInput, score
from engine.errors import EngineError
from engine.methods.melbo import MelboTrainer, train_melbo
from engine.models import LoadedModel
from engine.refine.generalize import Generalized, generalize
from engine.refine.specs import GeneralizeSpec
from engine.specs import MelboSpec

TRAINED_ON = ("Tell me a story.",)
PROBES = ("Tell me a story.", "What is two plus two?", "Name a colour.", "Write a poem about the sea.")
HELD_OUT = ("Hello, how are you today?", "Please explain gravity to a child.")
TOKENS = 6


@pytest.fixture(scope="module")
def parent(tiny: LoadedModel) -> torch.Tensor:
    return train_melbo(tiny, MelboSpec(prompts=TRAINED_ON, n_vectors=1, radius=4.0)).vectors[0]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def spec(**changes: object) -> GeneralizeSpec:
    values: dict[str, object] = {
        "prompts": PROBES,
        "source": 1,
        "held_out": HELD_OUT,
        "max_new_tokens": TOKENS,
    }
    return GeneralizeSpec.from_dict({**values, **changes})


@pytest.fixture(scope="module")
def found(tiny: LoadedModel, embedder: Embedder, parent: torch.Tensor) -> Generalized:
    return generalize(tiny, embedder, parent, spec())


def objective(tiny: LoadedModel, vector: torch.Tensor, prompts: tuple[str, ...]) -> float:
    problem = MelboTrainer(tiny, MelboSpec(prompts=prompts, source=1, radius=4.0, n_vectors=1)).problem
    return float(problem.final(vector[None])[0][0])


def test_training_improves_the_objective_on_the_probe_set(
    tiny: LoadedModel, found: Generalized, parent: torch.Tensor
) -> None:
    before, after = objective(tiny, parent, PROBES), objective(tiny, found.vector, PROBES)
    assert after > before
    assert found.objective == pytest.approx({"before": before, "after": after}, rel=1e-4)
    assert found.held_out_objective["before"] == pytest.approx(objective(tiny, parent, HELD_OUT), rel=1e-4)
    assert float(found.vector.norm()) == pytest.approx(4.0, rel=1e-4)  # at the vector's norm
    assert -1.0 <= found.cos_parent <= 1.0 and found.record.steps > 0


def test_held_out_completions_and_scores(
    tiny: LoadedModel, embedder: Embedder, found: Generalized, parent: torch.Tensor
) -> None:
    assert [h.prompt for h in found.held_out] == list(HELD_OUT)
    for which, vector in (("before", parent), ("after", found.vector)):
        rows = [
            GenerationRequest(prompt=p, block=1, terms=((vector, 1.0),), max_new_tokens=TOKENS)
            for p in HELD_OUT
        ]
        texts = [r.text for r in generate(tiny, rows)]
        assert [getattr(h, which).text for h in found.held_out] == texts
        plain = [
            r.text
            for r in generate(tiny, [GenerationRequest(prompt=p, max_new_tokens=TOKENS) for p in HELD_OUT])
        ]
        assert [h.unsteered.text for h in found.held_out] == plain
        expected = score(
            tiny, embedder, [ScoreInput(p, t, u) for p, t, u in zip(HELD_OUT, texts, plain, strict=True)]
        )
        got = [getattr(h, f"{which}_scores") for h in found.held_out]
        assert [s.effect for s in got] == pytest.approx([s.effect for s in expected], abs=1e-5)
        assert [s.flag for s in got] == [s.flag for s in expected]
    means = found.to_dict()["means"]
    assert sum(means["after"]["flags"].values()) == len(HELD_OUT)


def test_bad_input_is_refused(tiny: LoadedModel, embedder: Embedder, parent: torch.Tensor) -> None:
    with pytest.raises(EngineError, match="held-out"):
        spec(held_out=[])
    with pytest.raises(EngineError, match="at least one prompt"):
        spec(prompts=[])
    with pytest.raises(EngineError):
        generalize(tiny, embedder, torch.ones(7), spec())


def test_it_can_stay_orthogonal_to_siblings(tiny: LoadedModel, embedder: Embedder) -> None:
    run = train_melbo(tiny, MelboSpec(prompts=TRAINED_ON, n_vectors=2, radius=4.0, steps=10))
    kept = generalize(tiny, embedder, run.vectors[1], spec(steps=10), orthogonal_to=run.vectors[:1])
    assert abs(float(kept.vector @ run.vectors[0])) < 1e-3
