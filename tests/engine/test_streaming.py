"""Batched streaming for chat: each row's pieces join to the text `generate` gives; rows stop alone."""

from __future__ import annotations

from collections import defaultdict

import torch

from engine.generate import GenerationRequest, generate
from engine.models import LoadedModel, get_blocks
from engine.streaming import stream_batch

MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


def rows(lm: LoadedModel) -> list[GenerationRequest]:
    vector = torch.randn(lm.info.width, generator=torch.Generator().manual_seed(1)) * 4
    return [
        GenerationRequest(messages=MESSAGES, max_new_tokens=12, seed=3, temperature=0.8),
        GenerationRequest(
            messages=MESSAGES, block=1, terms=[(vector, 1.0)], max_new_tokens=12, seed=3, temperature=0.8
        ),
        GenerationRequest(prompt="Count to five.", max_new_tokens=7, ignore_eos=True),
    ]


def drain(gen: object) -> tuple[dict[int, str], list[object]]:
    pieces: dict[int, str] = defaultdict(str)
    while True:
        try:
            for row, piece in next(gen):  # type: ignore[call-overload]
                pieces[row] += piece
        except StopIteration as end:
            return pieces, end.value


def test_batched_stream_gives_the_texts_of_generate(tiny: LoadedModel) -> None:
    requests = rows(tiny)
    pieces, results = drain(stream_batch(tiny, requests))
    expected = generate(tiny, requests)
    assert [r.text for r in results] == [r.text for r in expected]  # type: ignore[attr-defined]
    assert [pieces[i] for i in range(3)] == [r.text for r in expected]
    assert pieces[0] != pieces[1]  # the steered row differs from the unsteered one


def test_a_halted_row_stops_while_the_others_finish(tiny: LoadedModel) -> None:
    requests = rows(tiny)
    steps = [0]
    before = [sorted(b._forward_hooks) for b in get_blocks(tiny.model)]  # transformers adds its own

    def halted() -> set[int]:  # asked once before each decoding step
        steps[0] += 1
        return {2} if steps[0] > 3 else set()

    _, results = drain(stream_batch(tiny, requests, halted=halted))
    assert results[2].finish_reason == "stopped" and results[2].n_tokens == 3  # type: ignore[attr-defined]
    assert results[0].text == generate(tiny, requests[:1])[0].text
    assert [sorted(b._forward_hooks) for b in get_blocks(tiny.model)] == before  # the steering hook is gone
