"""The corpus on the tiny model: answers as generation gives them, what is stored, projections
from the float16 store against a fresh forward pass, caching, and lazily built blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.decode.generate import GenerationRequest, generate
from engine.discovery.bank import FRAMES_PER_TOPIC, PRACTICE_FRAMES, SUBJECT_FRAMES, bank_prompts
from engine.discovery.corpus import Corpus, corpus_steps, model_folder
from engine.errors import EngineError
from engine.models import LoadedModel, load_model
from engine.units import run_steps
from tests.tiny import build_model_dir

GIVEN = ("Tell me a story about a dragon.", "What is the capital of France?")
BANK = 24  # the bank's first prompts: every one a different topic
TOKENS = 6
BLOCK = 1


def build(lm: LoadedModel, data: Path, block: int = BLOCK) -> tuple[Corpus, list[tuple[str, int, int]]]:
    units: list[tuple[str, int, int]] = []
    steps = corpus_steps(lm, data, block, prompts=GIVEN, bank=BANK, max_new_tokens=TOKENS)
    corpus = run_steps(steps, lambda *unit: units.append(unit))
    return corpus, units


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def built(tiny: LoadedModel, data: Path) -> tuple[Corpus, list[tuple[str, int, int]]]:
    return build(tiny, data)


def fresh(lm: LoadedModel, ids: tuple[int, ...], block: int) -> torch.Tensor:
    """hidden_states[block + 1] of one sequence, from a plain forward pass: [T, d]."""
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    return out.hidden_states[block + 1][0].float()


def test_the_bank_is_large_varied_and_fixed() -> None:
    bank = bank_prompts()
    assert len(bank) >= 1000 and len({b.text for b in bank}) == len(bank)
    assert len({b.topic for b in bank}) >= 100 and len({b.area for b in bank}) >= 10
    assert all(sum(b.topic == t for b in bank) == FRAMES_PER_TOPIC for t in {b.topic for b in bank[:40]})
    first = bank_prompts(len({b.topic for b in bank}))
    assert len({b.topic for b in first}) == len(first)  # a prefix asks every topic once
    assert all(b.text == (SUBJECT_FRAMES + PRACTICE_FRAMES)[0].format(b.topic) for b in bank if b.frame == 0)


def test_answers_are_the_models_greedy_replies(tiny: LoadedModel, built: tuple[Corpus, list]) -> None:
    corpus, units = built
    assert [d.kind for d in corpus.documents] == ["given"] * 2 + ["bank"] * BANK
    docs = corpus.documents[:2] + corpus.documents[-2:]
    plain = generate(tiny, [GenerationRequest(prompt=d.prompt, max_new_tokens=TOKENS) for d in docs])
    for doc, result in zip(docs, plain, strict=True):
        assert doc.completion == result.text and doc.ids[doc.answer :] == result.token_ids
        # Stored: the user turn on (its text first), never the template's preamble or position 0.
        assert doc.first >= 1 and tiny.tokenizer.decode(doc.ids[doc.first : doc.answer]).startswith(
            doc.prompt
        )
    phases = {u[0] for u in units}
    assert phases == {"answering", "residuals"} and units[-1][1] == units[-1][2]


def test_stored_projections_match_a_fresh_forward_pass(tiny: LoadedModel, built: tuple[Corpus, list]) -> None:
    corpus, _ = built
    v = torch.randn(tiny.info.width, generator=torch.Generator().manual_seed(3))
    unit = v.double() / v.double().norm()
    values = corpus.project(v)
    assert values.shape == (corpus.size,) and values.dtype == torch.float32
    total = torch.zeros(tiny.info.width, dtype=torch.float64)
    worst = 0.0
    for i, doc in enumerate(corpus.documents):
        h = fresh(tiny, doc.ids, BLOCK)[doc.first :].double()  # [stored, d]
        total += h.sum(dim=0)
        expected = (h - corpus.mean) @ unit
        got = values[int(corpus.starts[i]) : int(corpus.starts[i + 1])].double()
        # Three float16 roundings (storage, unit vector, result), each within 2^-11 of the norm.
        norm = h.norm(dim=1)
        assert bool(((got - expected).abs() <= 3 * 2.0**-11 * norm + 1e-6).all())
        worst = max(worst, float(((got - expected).abs() / norm).max()))
    assert worst < 2.0**-11  # in practice the errors mostly cancel: under one rounding's bound
    torch.testing.assert_close(corpus.mean, total / corpus.size, rtol=1e-5, atol=1e-6)
    assert abs(float(values.double().mean())) < 1e-3 * float(values.double().abs().mean())  # centred
    assert corpus.in_prompt.sum() == sum(d.answer - d.first for d in corpus.documents)


def test_a_second_call_reads_the_cache_and_a_new_block_is_built_alone(
    tiny: LoadedModel, data: Path, built: tuple[Corpus, list]
) -> None:
    corpus, _ = built
    folder = model_folder(data, tiny)
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    again, units = build(tiny, data)
    assert units == []
    v = torch.randn(tiny.info.width, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again.project(v), corpus.project(v))
    deeper, units = build(tiny, data, block=2)
    assert {u[0] for u in units} == {"residuals"}  # answers reused, only block 2's residuals
    new = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert set(new) - set(files) == {
        p.parent / n for p in files if p.name == "block-1.npy" for n in ("block-2.npy", "block-2-sum.npy")
    }
    assert deeper.size == corpus.size and not torch.equal(deeper.mean, corpus.mean)


def test_a_prompts_only_corpus_decodes_nothing(tiny: LoadedModel, tmp_path: Path) -> None:
    units: list[tuple[str, int, int]] = []
    steps = corpus_steps(tiny, tmp_path, BLOCK, prompts=GIVEN, bank=4, max_new_tokens=0)
    corpus = run_steps(steps, lambda *unit: units.append(unit))
    assert {u[0] for u in units} == {"residuals"}
    assert all(d.answer == len(d.ids) and d.completion == "" for d in corpus.documents)
    assert bool(corpus.in_prompt.all()) and corpus.size == sum(d.stored for d in corpus.documents)


def test_a_retrained_model_under_the_same_name_gets_its_own_corpus(tmp_path: Path, tiny: LoadedModel) -> None:
    path = tmp_path / "model"
    first = model_folder(tmp_path, load_model(str(build_model_dir(path, seed=0)), device="cpu"))
    second = model_folder(tmp_path, load_model(str(build_model_dir(path, seed=1)), device="cpu"))
    assert first != second and first.parent == second.parent


def test_bad_requests_are_refused(tiny: LoadedModel, data: Path) -> None:
    with pytest.raises(EngineError, match="out of range"):
        run_steps(corpus_steps(tiny, data, 9, prompts=GIVEN))
    with pytest.raises(EngineError, match="prompts, the bank or both"):
        run_steps(corpus_steps(tiny, data, 1, bank=False))
    corpus, _ = build(tiny, data)
    with pytest.raises(EngineError, match="shape"):
        corpus.project(torch.ones(3))


@pytest.mark.slow
def test_on_the_embedded_model_the_preamble_is_left_out_and_projections_match(
    embedded: LoadedModel, tmp_path: Path
) -> None:
    corpus = run_steps(corpus_steps(embedded, tmp_path, 7, prompts=GIVEN, bank=6, max_new_tokens=8))
    v = torch.randn(embedded.info.width, generator=torch.Generator().manual_seed(5))
    unit = v.double() / v.double().norm()
    values = corpus.project(v)
    for i, doc in enumerate(corpus.documents):
        rendered = embedded.tokenizer.decode(doc.ids[: doc.first])
        assert "You are a helpful AI assistant" in rendered  # the template's system prompt: not stored
        assert embedded.tokenizer.decode(doc.ids[doc.first : doc.answer]).startswith(doc.prompt)
        h = fresh(embedded, doc.ids, 7)[doc.first :].double()
        got = values[int(corpus.starts[i]) : int(corpus.starts[i + 1])].double()
        assert bool(((got - (h - corpus.mean) @ unit).abs() <= 3 * 2.0**-11 * h.norm(dim=1)).all())
