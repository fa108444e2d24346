"""Continuous batching: requests that join a running batch, leave it early or wait for room give
exactly the text they give alone; no step leaves a hook behind."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Hashable
from pathlib import Path

import pytest
import torch

from engine.decode.decoder import Decoder
from engine.decode.generate import GenerationRequest, GenerationResult, generate
from engine.errors import EngineError
from engine.models import LoadedModel, get_blocks, load_model
from tests.tiny import ARCH_CONFIGS, build_model_dir

MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]
LONG = "What is the capital of France? Please explain gravity to a child, and write a poem about it."


def vec(width: int, norm: float, seed: int) -> torch.Tensor:
    v = torch.randn(width, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * norm


def requests(width: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(messages=MESSAGES, max_new_tokens=12, seed=3, temperature=0.8),
        GenerationRequest(
            messages=MESSAGES,
            block=1,
            terms=[(vec(width, 4.0, 1), 1.0)],
            max_new_tokens=10,
            seed=3,
            temperature=0.8,
        ),
        GenerationRequest(prompt=LONG, max_new_tokens=9, ignore_eos=True),
        GenerationRequest(
            prompt="Hi",
            block=2,
            terms=[(vec(width, 3.0, 2), -1.0)],
            where="generated",
            max_new_tokens=14,
            ignore_eos=True,
        ),
        GenerationRequest(
            prompt="Count to five.", max_new_tokens=5, temperature=1.2, top_p=0.9, seed=11, ignore_eos=True
        ),
    ]


def hooks(lm: LoadedModel) -> list[list[int]]:
    return [sorted(b._forward_hooks) + sorted(b._forward_pre_hooks) for b in get_blocks(lm.model)]


class Every:
    """A preempt signal that turns true at every n-th block asked, so passes stop at varied blocks."""

    def __init__(self, n: int) -> None:
        self.n, self.asked, self.fired = n, 0, 0

    def __call__(self) -> bool:
        self.asked += 1
        fire = self.asked % self.n == 0
        self.fired += fire
        return fire


def run(
    decoder: Decoder,
    arrivals: dict[int, list[tuple[Hashable, GenerationRequest]]],
    preempt: Every | None = None,
) -> tuple[dict[Hashable, GenerationResult], dict[Hashable, str]]:
    """Step until everything finished; `arrivals[k]` join just before step k."""
    results: dict[Hashable, GenerationResult] = {}
    pieces: dict[Hashable, str] = defaultdict(str)
    k = 0
    while decoder or any(when >= k for when in arrivals):
        for key, request in arrivals.get(k, []):
            decoder.add(key, request)
        step = decoder.step(preempt)
        for key, piece in step.pieces:
            pieces[key] += piece
        results.update(step.finished)
        k += 1
        assert k < 500, "the decoder never finished"
    return results, pieces


def test_rows_joining_at_any_step_give_their_solo_text(tiny: LoadedModel) -> None:
    rows = requests(tiny.info.width)
    alone = [generate(tiny, [r])[0] for r in rows]
    before = hooks(tiny)
    decoder = Decoder(tiny)
    # Two at once, one after 3 steps, two while the first ones are long gone.
    arrivals = {0: [(0, rows[0]), (1, rows[1])], 3: [(2, rows[2])], 20: [(3, rows[3]), (4, rows[4])]}
    results, pieces = run(decoder, arrivals)
    assert [results[i] for i in range(5)] == alone
    assert [pieces[i] for i in range(5)] == [r.text for r in alone]  # streamed pieces add up
    assert hooks(tiny) == before
    assert results[0].text != results[1].text  # the steered row differs


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_preempted_steps_change_no_text(tiny: LoadedModel, n: int) -> None:
    rows = requests(tiny.info.width)
    alone = [generate(tiny, [r])[0] for r in rows]
    before = hooks(tiny)
    preempt = Every(n)
    arrivals = {0: [(0, rows[0]), (1, rows[1])], 3: [(2, rows[2])], 6: [(3, rows[3]), (4, rows[4])]}
    results, pieces = run(Decoder(tiny), arrivals, preempt)
    assert preempt.fired > 5  # steps were given up, some after blocks had written their cache
    assert [results[i] for i in range(5)] == alone
    assert [pieces[i] for i in range(5)] == [r.text for r in alone]
    assert hooks(tiny) == before


def test_a_step_after_a_preempted_one_runs_to_its_end(tiny: LoadedModel) -> None:
    request = GenerationRequest(prompt="Hi", max_new_tokens=6, ignore_eos=True)
    decoder = Decoder(tiny)
    decoder.add("a", request)
    kinds = []
    while decoder:
        step = decoder.step(lambda: True)  # work is always waiting
        kinds.append("preempted" if step.preempted else len(step.pieces) + len(step.finished))
    assert kinds.count("preempted") == 5  # every decode step is given up once, then runs
    assert all(a == "preempted" for a in kinds[1::2])


def test_decode_steps_write_into_the_cache_without_copying_it(tiny: LoadedModel) -> None:
    decoder = Decoder(tiny)
    decoder.add("a", GenerationRequest(prompt="Hi", max_new_tokens=12, ignore_eos=True))
    for _ in range(3):  # the prefill, then the first decode step gives the layers their room
        decoder.step()
    layer = decoder.cache.layers[0]
    where, length = layer.keys.data_ptr(), layer.keys.shape[2]
    for i in range(1, 6):
        decoder.step()
        assert layer.keys.shape[2] == length + i
        assert layer.keys.data_ptr() == where  # the new column went into the room behind the keys


def test_every_step_leaves_the_hooks_as_it_found_them(tiny: LoadedModel) -> None:
    rows = requests(tiny.info.width)
    decoder = Decoder(tiny)
    before = hooks(tiny)
    for i, r in enumerate(rows):
        decoder.add(i, r)
    while decoder:
        decoder.step()
        assert hooks(tiny) == before


def test_a_stopped_row_leaves_while_the_others_finish(tiny: LoadedModel) -> None:
    rows = requests(tiny.info.width)
    decoder = Decoder(tiny)
    for i, r in enumerate(rows[:3]):
        decoder.add(i, r)
    results: dict[Hashable, GenerationResult] = {}
    steps = 0
    while decoder:
        if steps == 3:
            decoder.stop(2)
        results.update(decoder.step().finished)
        steps += 1
    assert results[2].finish_reason == "stopped" and 0 < results[2].n_tokens < 9
    assert results[0] == generate(tiny, [rows[0]])[0]
    assert results[1] == generate(tiny, [rows[1]])[0]


def test_a_request_stopped_before_it_joins_finishes_empty(tiny: LoadedModel) -> None:
    decoder = Decoder(tiny)
    decoder.add("a", requests(tiny.info.width)[2])
    decoder.stop("a")
    step = decoder.step()
    assert step.finished[0][1].finish_reason == "stopped" and step.finished[0][1].n_tokens == 0
    assert not decoder


def test_rows_beyond_the_limit_wait_for_room(tiny: LoadedModel) -> None:
    rows = requests(tiny.info.width)
    decoder = Decoder(tiny, max_rows=2)
    for i, r in enumerate(rows):
        decoder.add(i, r)
    most = 0
    results: dict[Hashable, GenerationResult] = {}
    while decoder:
        results.update(decoder.step().finished)
        most = max(most, sum(not row.done for row in decoder.rows))
    assert most == 2
    assert [results[i] for i in range(5)] == [generate(tiny, [r])[0] for r in rows]


def test_shared_padding_is_cut_when_long_rows_leave(tiny: LoadedModel) -> None:
    short = GenerationRequest(prompt="Hi", max_new_tokens=30, ignore_eos=True)
    long = GenerationRequest(prompt=LONG * 2, max_new_tokens=6, ignore_eos=True)
    decoder = Decoder(tiny)
    decoder.add("long", long)
    decoder.step()
    decoder.add("short", short)  # joins padded to the long row's length
    results: dict[Hashable, GenerationResult] = {}
    widths = []
    while decoder:
        results.update(decoder.step().finished)
        widths.append(decoder.mask.shape[1])
    assert max(widths) > 40  # the short row was padded while the long one decoded,
    assert any(after < before - 40 for before, after in itertools.pairwise(widths))  # it went with it ...
    assert results["short"] == generate(tiny, [short])[0]  # ... and the short row's text never noticed


def test_keys_are_unique_and_checks_run_on_add(tiny: LoadedModel) -> None:
    decoder = Decoder(tiny)
    decoder.add("a", GenerationRequest(prompt="Hi"))
    with pytest.raises(EngineError, match="already decoding"):
        decoder.add("a", GenerationRequest(prompt="Hi"))
    with pytest.raises(EngineError, match="out of range"):
        decoder.add("b", GenerationRequest(prompt="Hi", block=99, terms=[(torch.zeros(64), 1.0)]))
    assert len(decoder) == 1


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_late_joiners_match_on_every_architecture(arch: str, tmp_path: Path) -> None:
    lm = load_model(str(build_model_dir(tmp_path / arch, arch)), device="cpu")
    # The sliding-window families (window 8) see prompts longer than their window.
    first = GenerationRequest(prompt=LONG, max_new_tokens=12, ignore_eos=True)
    late = GenerationRequest(
        prompt="Hi",
        max_new_tokens=8,
        temperature=0.9,
        seed=5,
        block=1,
        terms=[(vec(64, 2.0, 3), 1.0)],
        ignore_eos=True,
    )
    results, _ = run(Decoder(lm), {0: [("first", first)], 4: [("late", late)]})
    assert results["first"] == generate(lm, [first])[0]
    assert results["late"] == generate(lm, [late])[0]
    preempted, _ = run(Decoder(lm), {0: [("first", first)], 4: [("late", late)]}, Every(3))
    assert preempted == results  # a step given up halfway left no trace in the cache
