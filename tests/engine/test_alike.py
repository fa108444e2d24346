"""Trigger hunting by answers, on the tiny model with the real sentence-embedding model: answers are
embedded once and kept beside the corpus, prompts rank by their own answer along the change a
vector makes to the run prompts' answers, and the dashboard answers steered as a worker's units."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.decode.generate import GenerationRequest, generate
from engine.discovery.alike import alike_prompts, answer_change, answer_embedding_steps, plain_answers
from engine.discovery.corpus import Corpus, corpus_steps
from engine.discovery.dashboard import DashboardSpec, dashboard, dashboard_steps
from engine.discovery.embedder import Embedder
from engine.errors import EngineError
from engine.models import LoadedModel
from engine.units import run_steps

BLOCK = 1
GIVEN = ("Tell me a story about a dragon.", "What is the capital of France?")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def corpus_of(tiny: LoadedModel, data: Path, tokens: int = 6) -> Corpus:
    return run_steps(corpus_steps(tiny, data, BLOCK, prompts=GIVEN, bank=24, max_new_tokens=tokens))


def test_answers_are_embedded_once_and_kept(tiny: LoadedModel, data: Path, embedder: Embedder) -> None:
    corpus = corpus_of(tiny, data)
    units: list[tuple[str, int, int]] = []
    embedded = run_steps(answer_embedding_steps(embedder, corpus), lambda *u: units.append(u))
    assert units and {u[0] for u in units} == {"embedding"} and units[-1][1:] == (26, 26)
    fresh = embedder.encode([d.completion for d in corpus.documents])
    assert embedded.shape == (26, embedder.width)
    assert torch.allclose(embedded, fresh, atol=1e-5)
    units.clear()
    again = run_steps(answer_embedding_steps(embedder, corpus), lambda *u: units.append(u))
    assert units == [] and torch.equal(again, embedded)  # read back from the shard folders


def test_prompts_without_answers_are_never_listed(tiny: LoadedModel, data: Path, embedder: Embedder) -> None:
    corpus = corpus_of(tiny, data, tokens=0)
    embedded = run_steps(answer_embedding_steps(embedder, corpus))
    assert float(embedded.abs().max()) == 0.0
    assert alike_prompts(corpus, embedded, torch.ones(embedder.width)) == []


def test_prompts_rank_by_their_own_answer(tiny: LoadedModel, data: Path, embedder: Embedder) -> None:
    corpus = corpus_of(tiny, data)
    embedded = run_steps(answer_embedding_steps(embedder, corpus))
    answers = [d.completion for d in corpus.documents]
    target = next(i for i, a in enumerate(answers) if answers.count(a) == 1 and a.strip())
    others = [a for a in answers if a != answers[target]]
    change = answer_change(embedder, [answers[target]], [others[0]])
    rows = alike_prompts(corpus, embedded, change, k=5)
    assert rows[0]["document"] == target and rows[0]["answer"] == answers[target]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    expected = torch.topk(embedded @ change, 5).values
    assert [r["score"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-4)
    assert {r["kind"] for r in alike_prompts(corpus, embedded, change, kinds=("given",))} == {"given"}
    # Prompts that answer word for word alike share a score, keep the corpus's order, and say so.
    common = max(set(answers), key=answers.count)
    assert answers.count(common) > 1  # the tiny model repeats itself
    rows = alike_prompts(corpus, embedded, answer_change(embedder, [common], [others[0]]), k=26)
    assert all(r["same_answer"] == answers.count(r["answer"]) for r in rows)
    alike = [r for r in rows if r["answer"] == common]
    assert [r["document"] for r in alike] == [i for i, a in enumerate(answers) if a == common]
    assert len({r["score"] for r in alike}) == 1
    with pytest.raises(EngineError, match="not in the corpus"):
        plain_answers(corpus, ["a prompt nobody stored"])
    with pytest.raises(EngineError, match="answer embeddings"):
        alike_prompts(corpus, embedded[:3], change)


def test_the_dashboard_answers_steered_and_searches(
    tiny: LoadedModel, data: Path, embedder: Embedder
) -> None:
    spec = DashboardSpec(block=BLOCK, prompts=GIVEN, bank=24, nearest=4, max_new_tokens=6)
    v = 40 * torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(5)), dim=0)
    units: list[tuple[str, int, int]] = []
    steps = dashboard_steps(tiny, data, spec, vector=v, embedder=embedder)
    payload = run_steps(steps, lambda *u: units.append(u))
    phases = [u[0] for u in units]
    assert "steered" in phases and phases[-1] == "dashboard"
    alike = payload["alike"]
    requests = [GenerationRequest(prompt=p, block=BLOCK, terms=((v, 1.0),), max_new_tokens=6) for p in GIVEN]
    steered = [r.text for r in generate(tiny, requests)]
    assert [s["answer"] for s in alike["steered"]] == steered  # what a fresh steered decode says
    corpus = corpus_of(tiny, data)
    plain = plain_answers(corpus, GIVEN)
    assert alike["changed"] == sum(s != p for s, p in zip(steered, plain, strict=True)) > 0
    embedded = run_steps(answer_embedding_steps(embedder, corpus))
    expected = alike_prompts(corpus, embedded, answer_change(embedder, steered, plain), k=4)
    assert [r["document"] for r in alike["prompts"]] == [r["document"] for r in expected]
    # A vector too small to change any answer has nothing to search for.
    quiet = dashboard(tiny, spec, vector=1e-6 * v, corpus=corpus, embedder=embedder, answers=embedded)[
        "alike"
    ]
    assert quiet["changed"] == 0 and quiet["prompts"] == []
    assert dashboard(tiny, spec, vector=v, corpus=corpus)["alike"] is None  # no embedder: no search
