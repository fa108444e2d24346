"""Trigger hunting read downstream, on the tiny model: the ranking reads what a fresh forward pass
reads, a vector that moves prompts towards a marker finds the prompts that carry it, and the
dashboard carries the search when asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.discovery.corpus import Corpus, Part, corpus_steps
from engine.discovery.dashboard import DashboardSpec, dashboard_steps
from engine.discovery.downstream import downstream_change, last_prompt_positions, states_along
from engine.errors import EngineError
from engine.models import LoadedModel
from engine.prompts import encode_prompts
from engine.steer.capture import block_output
from engine.units import run_steps

BLOCK, LATER = 1, 2
SUBJECTS = ("the sea", "a poem", "gravity", "the fox", "a story", "France", "a child", "the dog")
MARKER = " and a dragon"
MARKED = tuple(f"Hello, how are you and {s}{MARKER}?" for s in SUBJECTS)
UNMARKED = tuple(f"Hello, how are you and {s}?" for s in SUBJECTS)
RUN = ("Tell me a story.", "What is the capital of France?")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def corpus_at(tiny: LoadedModel, data: Path, block: int) -> Corpus:
    extra = (Part("marked", MARKED), Part("unmarked", UNMARKED))
    return run_steps(corpus_steps(tiny, data, block, prompts=RUN, bank=24, extra=extra, max_new_tokens=4))


def last_states(tiny: LoadedModel, block: int, prompts: tuple[str, ...]) -> torch.Tensor:
    batch = encode_prompts(tiny.tokenizer, list(prompts))
    return block_output(tiny.model, block, batch.input_ids, batch.attention_mask)[:, -1]


def test_scores_are_what_a_fresh_forward_pass_reads(tiny: LoadedModel, data: Path) -> None:
    later = corpus_at(tiny, data, LATER)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    change = downstream_change(tiny, v, block=BLOCK, read=LATER, prompts=RUN)
    rows = states_along(later, change, k=5)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    unit = change / change.norm()
    for r in rows:
        fresh = last_states(tiny, LATER, (r["prompt"],))[0].double() - later.mean
        assert r["score"] == pytest.approx(float(fresh @ unit.double()), abs=2e-3 * float(fresh.norm()))
    positions = last_prompt_positions(later)
    assert all(not later.in_prompt[p + 1] for p in positions[:-1].tolist() if p + 1 < later.size)


def test_a_vector_towards_the_marker_finds_the_marked_prompts(tiny: LoadedModel, data: Path) -> None:
    """The vector is the marker's own difference at the steered block (marked minus unmarked
    prompts, last position); what it changes two blocks on is what the marked prompts carry there."""
    later = corpus_at(tiny, data, LATER)
    toward = (last_states(tiny, BLOCK, MARKED) - last_states(tiny, BLOCK, UNMARKED)).mean(dim=0)
    change = downstream_change(tiny, toward, block=BLOCK, read=LATER, prompts=RUN)
    top = states_along(later, change, k=len(MARKED), kinds=("marked", "unmarked", "bank"))
    assert sum(r["kind"] == "marked" for r in top) / len(top) >= 0.5  # base rate: 8 of 40
    random = torch.randn(64, generator=torch.Generator().manual_seed(1)) * float(toward.norm())
    chance = states_along(later, downstream_change(tiny, random, block=BLOCK, read=LATER, prompts=RUN), k=8)
    assert sum(r["kind"] == "marked" for r in chance) < sum(r["kind"] == "marked" for r in top)


def test_the_dashboard_reads_it_when_asked(tiny: LoadedModel, data: Path) -> None:
    v = torch.randn(64, generator=torch.Generator().manual_seed(2))
    spec = DashboardSpec(block=BLOCK, prompts=RUN, bank=False, max_new_tokens=4, nearest=3, downstream=LATER)
    payload = run_steps(dashboard_steps(tiny, data, spec, vector=v))
    down = payload["downstream"]
    assert down["block"] == LATER and down["position"] == "last prompt token" and len(down["prompts"]) == 2
    plain = run_steps(
        dashboard_steps(tiny, data, DashboardSpec(block=BLOCK, prompts=RUN, bank=False), vector=v)
    )
    assert plain["downstream"] is None


def test_bad_requests_are_refused(tiny: LoadedModel) -> None:
    v = torch.randn(64)
    with pytest.raises(EngineError, match="after the steered block"):
        downstream_change(tiny, v, block=2, read=2, prompts=RUN)
    with pytest.raises(EngineError, match="downstream block"):
        DashboardSpec(block=2, downstream=1)
    with pytest.raises(EngineError, match="at least one prompt"):
        downstream_change(tiny, v, block=1, read=2, prompts=())
