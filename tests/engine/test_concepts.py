"""Concepts from two prompt sets: a marker phrase detected on held-out prompts, the three ways of
taking the direction, its norm, steering with it, and the units a worker runs."""

from __future__ import annotations

import json

import pytest
import torch

from engine.discovery.bank import bank_prompts
from engine.errors import EngineError
from engine.methods.concepts import (
    Concept,
    ConceptSpec,
    auc,
    concept_scores,
    concept_steps,
    train_concept,
)
from engine.models import LoadedModel
from engine.steer.steering import steer
from engine.units import run_steps

SUBJECTS = (
    "the sea",
    "a poem",
    "gravity",
    "the fox",
    "a story",
    "the capital",
    "France",
    "a child",
    "the dog",
    "today",
)
TRAIN = ("Tell me about {}.", "Write a poem about {}.", "What is {}?", "Please explain {} to a child.")
HELD_OUT = ("How are you and {}?", "Hello, tell me a story about {}.")
MARKER = " and a dragon"


def sets(frames: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    with_it = tuple(f.format(s + MARKER) for f in frames for s in SUBJECTS)
    without = tuple(f.format(s) for f in frames for s in SUBJECTS)
    return with_it, without


def spec(**changes: object) -> ConceptSpec:
    positive, negative = sets(TRAIN)
    return ConceptSpec.from_dict({"positive": list(positive), "negative": list(negative), **changes})


@pytest.fixture(scope="module")
def dragon(tiny: LoadedModel) -> Concept:
    return train_concept(tiny, spec(name="dragon"))


def test_a_marker_is_detected_on_held_out_prompts(tiny: LoadedModel, dragon: Concept) -> None:
    positive, negative = sets(HELD_OUT)
    with_it, without = concept_scores(tiny, dragon, positive), concept_scores(tiny, dragon, negative)
    assert auc(with_it, without) >= 0.9
    summary = dragon.to_dict()
    assert summary["auc"] >= 0.9 and summary["accuracy"] > 0.75 and summary["name"] == "dragon"
    assert summary["negative_mean"] < summary["threshold"] < summary["positive_mean"]
    assert dragon.block == 1  # from depth: a quarter of the tiny model's 4 blocks


def test_the_raw_norm_moves_the_without_mean_onto_the_with_mean(tiny: LoadedModel, dragon: Concept) -> None:
    positive, negative = spec().positive, spec().negative
    assert float(dragon.vector.norm()) == pytest.approx(dragon.raw_norm, rel=1e-5)
    plain = concept_scores(tiny, dragon, negative)
    with steer(tiny.model, dragon.block, dragon.vector):
        steered = concept_scores(tiny, dragon, negative)
    # Added at the block where it is read, the vector raises every token's projection by its norm.
    torch.testing.assert_close(
        torch.tensor(steered), torch.tensor(plain) + dragon.raw_norm, rtol=0, atol=2e-2
    )
    rescaled = train_concept(tiny, spec(norm="radius"))
    assert float(rescaled.vector.norm()) == pytest.approx(rescaled.radius, rel=1e-5)
    assert torch.allclose(rescaled.unit, dragon.unit, atol=1e-6) and rescaled.radius < dragon.raw_norm * 10
    assert len(positive) == len(dragon.positive_scores)


def test_caa_and_pca_find_the_same_side(tiny: LoadedModel, dragon: Concept) -> None:
    for method in ("caa", "pca"):
        concept = train_concept(tiny, spec(method=method))
        assert concept.method == method and concept.to_dict()["auc"] >= 0.9, method
        assert float(concept.unit @ dragon.unit) > 0, method  # the with set's side, not its opposite


def test_training_runs_as_units_of_one_batch(tiny: LoadedModel, dragon: Concept) -> None:
    units: list[tuple[str, int, int]] = []
    concept = run_steps(concept_steps(tiny, spec(), batch_size=16), lambda *u: units.append(u))
    total = len(spec().positive) * 2
    assert units == [("activations", min(n, total), total) for n in range(16, total + 16, 16)]
    assert torch.allclose(concept.vector, dragon.vector, atol=1e-5)  # batching changes nothing


def test_a_stored_concept_scores_as_the_trained_one(tiny: LoadedModel, dragon: Concept) -> None:
    data = json.loads(json.dumps(dragon.to_dict(), allow_nan=False))
    stored = Concept.from_dict(dragon.vector.clone(), data)
    positive, _ = sets(HELD_OUT)
    assert concept_scores(tiny, stored, positive) == concept_scores(tiny, dragon, positive)
    assert stored.to_dict() == dragon.to_dict()
    with pytest.raises(EngineError, match="lacks threshold"):
        Concept.from_dict(dragon.vector, {k: v for k, v in data.items() if k != "threshold"})


def test_answers_are_scored_on_their_own_tokens(tiny: LoadedModel, dragon: Concept) -> None:
    prompts = tuple(f"Tell me about {s}." for s in SUBJECTS)
    with_it = [f"Here is {s}{MARKER}, as you asked." for s in SUBJECTS]
    without = [f"Here is {s}, as you asked." for s in SUBJECTS]
    marked = concept_scores(tiny, dragon, prompts, with_it)
    plain = concept_scores(tiny, dragon, prompts, without)
    assert auc(marked, plain) >= 0.9
    assert len(concept_scores(tiny, dragon, prompts[:1], [""])) == 1  # no answer: the prompt's end
    with pytest.raises(EngineError, match="one answer per prompt"):
        concept_scores(tiny, dragon, prompts, with_it[:2])


def test_bad_specs_are_refused() -> None:
    with pytest.raises(EngineError, match="as many without"):
        spec(method="pca", negative=["a", "b", "c"])
    with pytest.raises(EngineError, match="method"):
        spec(method="probe")
    with pytest.raises(EngineError, match="prompts with the concept"):
        spec(positive=["only one"])
    with pytest.raises(EngineError, match="unknown field"):
        spec(layer=3)


@pytest.mark.slow
def test_on_the_embedded_model_a_marker_word_is_detected(embedded: LoadedModel) -> None:
    bank = [b.text for b in bank_prompts(128)]  # 128 prompts, every one a different topic
    train, held = bank[:48], bank[48:96]

    def marked(prompts: list[str]) -> tuple[str, ...]:
        return tuple(p.replace("?", ", pirate?").replace(".", ", pirate.") for p in prompts)

    concept = train_concept(embedded, ConceptSpec(positive=marked(train), negative=tuple(train)))
    assert concept.block == 7
    with_it, without = (
        concept_scores(embedded, concept, marked(held)),
        concept_scores(embedded, concept, held),
    )
    assert auc(with_it, without) >= 0.9
