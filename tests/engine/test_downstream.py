"""Trigger hunting read downstream, on the tiny model: the change and the ranking are what a fresh
forward pass reads, a vector that moves prompts towards a marker finds the prompts that carry it
where a random one does not, and the dashboard carries the search when asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.discovery.corpus import Corpus, Part, corpus_steps
from engine.discovery.dashboard import DashboardSpec, dashboard_steps
from engine.discovery.downstream import downstream_change
from engine.discovery.occurrence import nearest_prompts
from engine.errors import EngineError
from engine.methods.concepts import ConceptSpec, train_concept
from engine.models import LoadedModel
from engine.prompts import encode_prompts
from engine.steer.capture import block_output
from engine.steer.steering import steer
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


def user_states(tiny: LoadedModel, block: int, prompts: tuple[str, ...]) -> torch.Tensor:
    """Each prompt's mean state over its user turn at the block: [P, d]."""
    batch = encode_prompts(tiny.tokenizer, list(prompts))
    out = block_output(tiny.model, block, batch.input_ids, batch.attention_mask)
    return torch.stack([out[i][batch.user_mask[i]].mean(dim=0) for i in range(len(prompts))])


def search(tiny: LoadedModel, later: Corpus, change: torch.Tensor, **kw: object) -> list[dict]:
    return nearest_prompts(later, later.project(change), tiny.tokenizer, rank_by="mean", **kw)  # type: ignore[arg-type]


def test_scores_are_what_a_fresh_forward_pass_reads(tiny: LoadedModel, data: Path) -> None:
    later = corpus_at(tiny, data, LATER)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    change = downstream_change(tiny, v, block=BLOCK, read=LATER, prompts=RUN)
    # The change itself: the steered minus the unsteered mean user-turn state, fresh.
    batch = encode_prompts(tiny.tokenizer, list(RUN))
    plain = block_output(tiny.model, LATER, batch.input_ids, batch.attention_mask)
    with steer(tiny.model, BLOCK, v):
        steered = block_output(tiny.model, LATER, batch.input_ids, batch.attention_mask)
    assert torch.allclose(change, (steered - plain)[batch.user_mask].mean(dim=0), atol=1e-5)
    rows = search(tiny, later, change, k=5)
    unit = (change / change.norm()).double()
    for r in rows:
        fresh = user_states(tiny, LATER, (r["prompt"],))[0].double() - later.mean
        assert r["score"] == pytest.approx(float(fresh @ unit), abs=2e-3 * float(fresh.norm()))


def test_a_vector_towards_the_marker_finds_the_marked_prompts(tiny: LoadedModel, data: Path) -> None:
    """The vector is the marker's concept at the steered block (prompts in other frames with and
    without it); what it changes a block on is what the marked prompts carry there. Random vectors
    of the same norm do not find them."""
    later = corpus_at(tiny, data, LATER)
    frames = ("Tell me about {}.", "Write a poem about {}.", "What is {}?", "Please explain {} to a child.")
    spec = ConceptSpec(
        positive=tuple(f.format(s + MARKER) for f in frames for s in SUBJECTS),
        negative=tuple(f.format(s) for f in frames for s in SUBJECTS),
        block=BLOCK,
    )
    toward = train_concept(tiny, spec).vector
    searched = ("marked", "unmarked", "bank")

    def marked(v: torch.Tensor) -> int:
        change = downstream_change(tiny, v, block=BLOCK, read=LATER, prompts=RUN)
        return sum(r["kind"] == "marked" for r in search(tiny, later, change, k=len(MARKED), kinds=searched))

    found = marked(toward)
    assert found / len(MARKED) >= 0.5  # base rate: 8 of 40
    for seed in range(3):
        random = torch.randn(64, generator=torch.Generator().manual_seed(seed))
        assert marked(random / random.norm() * toward.norm()) < found


def test_the_dashboard_reads_it_when_asked(tiny: LoadedModel, data: Path) -> None:
    v = torch.randn(64, generator=torch.Generator().manual_seed(2))
    spec = DashboardSpec(block=BLOCK, prompts=RUN, bank=False, max_new_tokens=4, nearest=3, downstream=LATER)
    payload = run_steps(dashboard_steps(tiny, data, spec, vector=v))
    down = payload["downstream"]
    assert down["block"] == LATER and down["positions"].startswith("user turn") and len(down["prompts"]) == 2
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
