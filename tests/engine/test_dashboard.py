"""A vector's dashboard on the tiny model: the payload's shape and invariants, trigger hunting with
a concept, adapters, and the units a worker runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.discovery.corpus import Corpus, Part, corpus_steps
from engine.discovery.dashboard import DashboardSpec, dashboard, dashboard_steps
from engine.discovery.occurrence import nearest_prompts
from engine.errors import EngineError
from engine.methods.adapters import Adapter, random_factors
from engine.methods.concepts import ConceptSpec, train_concept
from engine.models import LoadedModel
from engine.units import run_steps

GIVEN = ("Tell me a story about a dragon.", "What is the capital of France?")
SUBJECTS = ("the sea", "a poem", "gravity", "the fox", "a story", "France", "a child", "the dog")
MARKER = " and a dragon"
# Held out from the concept's own prompts: other frames.
MARKED = tuple(f"Hello, how are you and {s}{MARKER}?" for s in SUBJECTS[:6])
UNMARKED = tuple(f"Hello, how are you and {s}?" for s in SUBJECTS[:6])
BLOCK = 1


@pytest.fixture(scope="module")
def corpus(tiny: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    extra = (Part("marked", MARKED), Part("unmarked", UNMARKED))
    steps = corpus_steps(
        tiny, tmp_path_factory.mktemp("data"), BLOCK, prompts=GIVEN, bank=24, extra=extra, max_new_tokens=6
    )
    return run_steps(steps)


def vector(seed: int) -> torch.Tensor:
    return torch.randn(64, generator=torch.Generator().manual_seed(seed))


def test_the_payload_is_plain_json_and_consistent(tiny: LoadedModel, corpus: Corpus) -> None:
    v = vector(0)
    spec = DashboardSpec(block=BLOCK, prompts=GIVEN, contexts=5, window=3, nearest=4, tokens=6)
    payload = dashboard(tiny, spec, vector=v, corpus=corpus, concepts={"same": 2 * v, "other": vector(1)})
    json.dumps(payload, allow_nan=False)
    assert payload["kind"] == "vector" and payload["norm"] == pytest.approx(float(v.norm()), abs=1e-3)
    assert len(payload["tokens"]["direct"]["promoted"]) == 6 and payload["tokens"]["effect"]["kl"] > 0
    assert payload["concepts"][0] == {"name": "same", "cosine": 1.0}
    values = corpus.project(v)
    contexts = payload["contexts"]
    assert len(contexts) == 5 and len({c["document"] for c in contexts}) == 5  # one per document
    assert contexts[0]["value"] == pytest.approx(float(values.max()), abs=1e-4)
    assert [c["value"] for c in contexts] == sorted((c["value"] for c in contexts), reverse=True)
    for c in contexts:
        assert len(c["tokens"]) <= 7 and c["tokens"][c["focus"]]["value"] == c["value"]
    hist = payload["histogram"]
    assert sum(hist["prompt"]) + sum(hist["answer"]) == corpus.size == payload["corpus"]["tokens"]
    assert len(hist["edges"]) == 41 and hist["edges"][0] == pytest.approx(float(values.min()), abs=1e-4)
    scores = [p["score"] for p in payload["prompts"]]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    assert payload["corpus"]["kinds"] == {"given": 2, "bank": 24, "marked": 6, "unmarked": 6}


def test_a_concept_finds_the_prompts_that_carry_it(tiny: LoadedModel, corpus: Corpus) -> None:
    frames = ("Tell me about {}.", "Write a poem about {}.", "What is {}?", "Please explain {} to a child.")
    concept = train_concept(
        tiny,
        ConceptSpec(
            positive=tuple(f.format(s + MARKER) for f in frames for s in SUBJECTS),
            negative=tuple(f.format(s) for f in frames for s in SUBJECTS),
            block=BLOCK,
        ),
    )
    values = corpus.project(concept.vector)
    searched = ("marked", "unmarked", "bank")
    top = nearest_prompts(corpus, values, tiny.tokenizer, k=len(MARKED), kinds=searched)
    assert sum(r["kind"] == "marked" for r in top) / len(top) >= 0.5  # base rate: 6 of 36
    assert all(r["kind"] in searched for r in top)


def test_an_adapter_gets_its_effect_only(tiny: LoadedModel, corpus: Corpus) -> None:
    gen = torch.Generator().manual_seed(2)
    adapter = Adapter(BLOCK, random_factors(gen, 128, 4), random_factors(gen, 64, 4), radius=8.0)
    payload = dashboard(tiny, DashboardSpec(block=BLOCK, prompts=GIVEN), adapter=adapter)
    json.dumps(payload, allow_nan=False)
    assert payload["kind"] == "adapter" and payload["tokens"]["direct"] is None
    assert payload["tokens"]["effect"]["kl"] > 0 and payload["corpus"] is None and payload["contexts"] == []


def test_the_worker_runs_it_as_units(tiny: LoadedModel, tmp_path: Path) -> None:
    spec = DashboardSpec(block=BLOCK, prompts=GIVEN, bank=False, max_new_tokens=4)
    units: list[tuple[str, int, int]] = []
    payload = run_steps(dashboard_steps(tiny, tmp_path, spec, vector=vector(3)), lambda *u: units.append(u))
    assert [u[0] for u in units][-1] == "dashboard" and {"answering", "residuals"} <= {u[0] for u in units}
    assert payload["corpus"]["documents"] == 2
    units.clear()
    run_steps(dashboard_steps(tiny, tmp_path, spec, vector=vector(3)), lambda *u: units.append(u))
    assert units == [("dashboard", 0, 1)]  # the corpus is on disk now


def test_bad_requests_are_refused(tiny: LoadedModel, corpus: Corpus) -> None:
    with pytest.raises(EngineError, match="read at block 1"):
        dashboard(tiny, DashboardSpec(block=2), vector=vector(0), corpus=corpus)
    with pytest.raises(EngineError, match="zero"):
        dashboard(tiny, DashboardSpec(block=BLOCK), vector=torch.zeros(64), corpus=corpus)
    with pytest.raises(EngineError, match="a vector or an adapter"):
        dashboard(tiny, DashboardSpec(block=BLOCK))
    with pytest.raises(EngineError, match="rank prompts"):
        DashboardSpec.from_dict({"block": 1, "rank_by": "median"})
