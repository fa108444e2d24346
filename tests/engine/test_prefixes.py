"""Prompt prefixes kept across requests (engine/decode/prefixes.py): every row gives the same text
with and without them, steered rows included and rows whose steering differs never share; the
keys follow what computes the prompt positions, and the budget holds."""

from __future__ import annotations

from collections.abc import Hashable

import torch

from engine.decode.decoder import Decoder
from engine.decode.generate import GenerationRequest, GenerationResult
from engine.decode.prefixes import PrefixCache, common_prefix, prompt_steering
from engine.methods.adapters import Adapter
from engine.models import LoadedModel

FIRST = [{"role": "user", "content": "Tell me about the sea."}]


def vec(width: int, seed: int, norm: float = 4.0) -> torch.Tensor:
    v = torch.randn(width, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * norm


def adapter(lm: LoadedModel) -> Adapter:
    g = torch.Generator().manual_seed(9)
    ff = lm.model.model.layers[1].mlp.down_proj.in_features
    return Adapter(1, torch.randn(ff, 2, generator=g), torch.randn(lm.info.width, 2, generator=g), radius=3.0)


def rows(lm: LoadedModel, history: dict[int, list[dict[str, str]]]) -> list[GenerationRequest]:
    """Panes of one conversation each: unsteered, steered everywhere by two different vectors (and
    one by the same vector at another scale), steered on the prompt or the reply only, an adapter,
    and a sampled pane."""
    w = lm.info.width
    steering: list[dict[str, object]] = [
        {},
        {"block": 1, "terms": [(vec(w, 1), 1.0)]},
        {"block": 1, "terms": [(vec(w, 2), 1.0)]},
        {"block": 1, "terms": [(vec(w, 1), 2.0)]},
        {"block": 2, "terms": [(vec(w, 1), 1.0)], "where": "prompt"},
        {"block": 2, "terms": [(vec(w, 3), 1.0)], "where": "generated"},
        {"adapter": adapter(lm)},
        {"temperature": 0.9, "seed": 4},
    ]
    return [
        GenerationRequest(messages=history.get(i, FIRST), max_new_tokens=10, **kw)  # type: ignore[arg-type]
        for i, kw in enumerate(steering)
    ]


def decode(decoder: Decoder, requests: list[GenerationRequest]) -> list[GenerationResult]:
    for i, request in enumerate(requests):
        decoder.add(i, request)
    done: dict[Hashable, GenerationResult] = {}
    while decoder:
        done.update(decoder.step().finished)
    return [done[i] for i in range(len(requests))]


def next_turn(results: list[GenerationResult], message: str) -> dict[int, list[dict[str, str]]]:
    return {
        i: [*FIRST, {"role": "assistant", "content": r.text}, {"role": "user", "content": message}]
        for i, r in enumerate(results)
    }


def test_every_row_gives_the_same_text_with_and_without_kept_prefixes(tiny: LoadedModel) -> None:
    kept = PrefixCache(64 * 2**20)
    plain = decode(Decoder(tiny), rows(tiny, {}))
    first = decode(Decoder(tiny, prefixes=kept), rows(tiny, {}))
    assert [r.text for r in first] == [r.text for r in plain]
    assert kept.stats.hits == 0  # nothing was kept before the first prefill
    # Conversations that start alike: the template's system prompt and the first message are reused.
    again = decode(Decoder(tiny, prefixes=kept), rows(tiny, {}))
    assert [r.text for r in again] == [r.text for r in plain]
    # The second turn: each conversation's history comes from the cache.
    second = rows(tiny, next_turn(plain, "And about rivers?"))
    before = kept.stats.reused_tokens
    with_kept = decode(Decoder(tiny, prefixes=kept), second)
    assert [r.text for r in with_kept] == [r.text for r in decode(Decoder(tiny), second)]
    assert kept.stats.reused_tokens - before > sum(len(r.token_ids) for r in plain) // 2


def test_rows_join_a_running_batch_from_kept_prefixes_with_their_solo_text(tiny: LoadedModel) -> None:
    kept = PrefixCache(64 * 2**20)
    requests = rows(tiny, {})
    solo = [decode(Decoder(tiny), [r])[0].text for r in requests]
    decode(Decoder(tiny, prefixes=kept), requests[:2])  # some prefixes are kept
    decoder = Decoder(tiny, prefixes=kept)
    done: dict[Hashable, GenerationResult] = {}
    for i, request in enumerate(requests):  # one joins at every step
        decoder.add(i, request)
        done.update(decoder.step().finished)
    while decoder:
        done.update(decoder.step().finished)
    assert [done[i].text for i in range(len(requests))] == solo


def test_the_key_is_what_computes_the_prompt_never_which_object_holds_it(tiny: LoadedModel) -> None:
    w = tiny.info.width

    def key(**kw: object) -> bytes:
        return prompt_steering(GenerationRequest(prompt="Hi", **kw))  # type: ignore[arg-type]

    v = vec(w, 1)
    assert key(block=1, terms=[(v, 1.0)]) == key(block=1, terms=[(v.clone(), 1.0)])
    different = [
        key(block=1, terms=[(v, 1.0)]),
        key(block=1, terms=[(v, 0.5)]),
        key(block=2, terms=[(v, 1.0)]),
        key(block=1, terms=[(vec(w, 2), 1.0)]),
        key(adapter=adapter(tiny)),
        key(),
    ]
    assert len(set(different)) == len(different)
    # Steering of the reply only leaves the prompt as it is unsteered.
    assert key(block=1, terms=[(v, 1.0)], where="generated") == key()


def test_the_budget_holds_least_recently_used_first_out() -> None:
    layer = [(torch.zeros(2, 4, 8), torch.zeros(2, 4, 8))]  # 512 bytes
    kept = PrefixCache(1200)
    kept.keep(b"a", (1, 2, 3, 4), lambda: layer)
    kept.keep(b"a", (1, 2, 3), lambda: layer)  # covered by the first: not kept twice
    kept.keep(b"b", (1, 2, 3, 4), lambda: layer)
    assert len(kept.entries) == 2 and kept.size == 1024
    assert kept.longest(b"a", (1, 2, 3, 9), limit=10)[0] == 3  # touched: now the most recent
    kept.keep(b"c", (5, 6, 7, 8), lambda: layer)
    assert [key[0] for key in kept.entries] == [b"a", b"c"] and kept.size <= 1200
    assert kept.longest(b"b", (1, 2, 3, 4), limit=10) == (0, None)
    assert PrefixCache(0).size == 0 and common_prefix((1, 2, 3), (1, 2, 4)) == 2


def test_a_prompt_kept_whole_still_prefills_its_last_token(tiny: LoadedModel) -> None:
    kept = PrefixCache(64 * 2**20)
    request = GenerationRequest(messages=FIRST, max_new_tokens=6)
    alone = decode(Decoder(tiny), [request])[0].text
    assert decode(Decoder(tiny, prefixes=kept), [request])[0].text == alone
    assert decode(Decoder(tiny, prefixes=kept), [request])[0].text == alone
    assert kept.stats.hits == 1
