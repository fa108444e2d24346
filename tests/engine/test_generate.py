"""Batched and streamed steered generation on the tiny model (and a check on the embedded one)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.decode.detokenizer import Detokenizer
from engine.decode.generate import GenerationRequest, generate, stream
from engine.errors import EngineError
from engine.models import LoadedModel, get_blocks, load_model
from engine.prompts import format_messages, format_prompt
from tests.tiny import ARCH_CONFIGS, build_model_dir

PROMPT = "Tell me a story about a dragon."
OTHERS = ["Hi", "What is the capital of France? Please explain gravity to a child, and write a poem."]


def vec(width: int, norm: float = 1.0, seed: int = 0) -> torch.Tensor:
    v = torch.randn(width, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * norm


def req(prompt: str = PROMPT, **kw: Any) -> GenerationRequest:
    kw.setdefault("max_new_tokens", 12)
    kw.setdefault("ignore_eos", True)  # a random model's EOS would make lengths arbitrary
    return GenerationRequest(prompt=prompt, **kw)


def run_stream(lm: LoadedModel, request: GenerationRequest, stop: Any = None) -> tuple[list[str], Any]:
    pieces: list[str] = []
    gen = stream(lm, request, stop=stop)
    try:
        while True:
            pieces.append(next(gen))
            if isinstance(stop, threading.Event) and len(pieces) == 2:
                stop.set()
    except StopIteration as end:
        return pieces, end.value


def hook_ids(lm: LoadedModel) -> list[list[int]]:
    return [sorted(b._forward_hooks) for b in get_blocks(lm.model)]


def test_same_seed_same_text_and_seeds_differ(tiny: LoadedModel) -> None:
    sampled = req(temperature=1.0, top_p=0.9, seed=7, max_new_tokens=16)
    first, second = generate(tiny, [sampled]), generate(tiny, [sampled])
    assert first == second and first[0].n_tokens == 16
    texts = {r.text for r in generate(tiny, [replace(sampled, seed=s) for s in range(4)])}
    assert len(texts) > 1


def test_row_alone_equals_row_in_batch(tiny: LoadedModel) -> None:
    width = tiny.info.width
    rows = [
        req(),  # greedy, unsteered
        req(OTHERS[0], block=1, terms=[(vec(width, 3.0), 1.0)]),
        req(OTHERS[1], block=2, terms=[(vec(width, 2.0, 1), -1.5)], where="generated"),
        req(temperature=0.8, seed=3, max_new_tokens=7),
        req(OTHERS[1], block=1, terms=[(vec(width, 1.0, 2), 2.0)], where="prompt", temperature=1.2),
    ]
    together = generate(tiny, rows)
    alone = [generate(tiny, [r])[0] for r in rows]
    assert together == alone
    assert [r.n_tokens for r in together] == [12, 12, 12, 7, 12]
    assert all(r.finish_reason == "length" for r in together)
    assert generate(tiny, rows, batch_size=2) == alone


def test_scale_zero_is_unsteered_and_steering_changes_output(tiny: LoadedModel) -> None:
    width = tiny.info.width
    plain = generate(tiny, [req()])[0]
    zero = generate(tiny, [req(block=1, terms=[(vec(width, 5.0), 0.0)])])[0]
    assert zero == plain
    steered = generate(tiny, [req(block=1, terms=[(vec(width, 5.0), 1.0)])])[0]
    assert steered.token_ids != plain.token_ids
    # Two terms that cancel steer nothing.
    v = vec(width, 5.0)
    assert generate(tiny, [req(block=1, terms=[(v, 1.0), (v, -1.0)])])[0] == plain


def test_where_generated_leaves_the_first_token(tiny: LoadedModel) -> None:
    width = tiny.info.width
    plain = generate(tiny, [req()])[0]
    terms = [(vec(width, 5.0), 1.0)]
    late = generate(tiny, [req(block=1, terms=terms, where="generated")])[0]
    early = generate(tiny, [req(block=1, terms=terms, where="prompt")])[0]
    # The first token is predicted by the prompt forward, which "generated" does not steer.
    assert late.token_ids[0] == plain.token_ids[0] and late.token_ids != plain.token_ids
    assert early.token_ids[0] != plain.token_ids[0] or early.token_ids != plain.token_ids


def test_eos_finishes_a_row_while_others_continue(tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = generate(tiny, [req()])[0]
    # Declare the first token that the greedy text had not produced before an EOS token.
    at = next(k for k in range(1, 12) if plain.token_ids[k] not in plain.token_ids[:k])
    monkeypatch.setattr(tiny.model.generation_config, "eos_token_id", [plain.token_ids[at]])
    results = generate(tiny, [req(ignore_eos=False), req(OTHERS[1])])  # the second ignores EOS
    assert results[0].token_ids == plain.token_ids[:at] and results[0].finish_reason == "eos"
    assert results[1].n_tokens == 12 and results[1].finish_reason == "length"
    assert results[1] == generate(tiny, [req(OTHERS[1])])[0]


def test_stream_equals_batched_text(tiny: LoadedModel) -> None:
    width = tiny.info.width
    for request in (req(), req(temperature=0.9, seed=11, block=2, terms=[(vec(width, 2.0), 1.0)])):
        pieces, result = run_stream(tiny, request)
        batched = generate(tiny, [request])[0]
        assert "".join(pieces) == batched.text == result.text and result == batched
        assert all(pieces)


def test_stream_never_splits_a_character(tiny: LoadedModel) -> None:
    text = "Hi 🐉 café ü!"
    ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.encode()) // 2  # the tiny vocabulary splits the dragon into bytes
    detok = Detokenizer(tiny.tokenizer)
    pieces = [detok.push(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert "🐉" in pieces or any(p.startswith("🐉") or p.endswith("🐉") for p in pieces)


def test_stop_event_and_callable_stop_the_stream(tiny: LoadedModel) -> None:
    event = threading.Event()
    pieces, result = run_stream(tiny, req(max_new_tokens=40), stop=event)
    assert result.finish_reason == "stopped" and 2 <= result.n_tokens < 40
    assert "".join(pieces) == result.text
    calls = iter(range(100))
    _, result = run_stream(tiny, req(max_new_tokens=40), stop=lambda: next(calls) >= 5)
    assert result.finish_reason == "stopped" and result.n_tokens == 5
    done = threading.Event()
    done.set()
    stopped = generate(tiny, [req(), req(OTHERS[0])], stop=done)
    assert [(r.n_tokens, r.finish_reason) for r in stopped] == [(0, "stopped")] * 2


def test_hooks_removed_after_generate_even_on_error(tiny: LoadedModel) -> None:
    before = hook_ids(tiny)
    steered = req(block=1, terms=[(vec(tiny.info.width), 1.0)])
    generate(tiny, [steered, req(block=2, terms=[(vec(tiny.info.width), 2.0)])])
    assert hook_ids(tiny) == before

    calls = {"n": 0}

    def fail_later(module: torch.nn.Module, args: Any, output: Any) -> None:
        calls["n"] += 1
        if calls["n"] % 3 == 0:  # the third forward of each generation
            raise RuntimeError("boom")

    last = get_blocks(tiny.model)[3]
    handle = last.register_forward_hook(fail_later)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            generate(tiny, [steered])
        with pytest.raises(RuntimeError, match="boom"):
            list(stream(tiny, steered))
    finally:
        handle.remove()
    assert hook_ids(tiny) == before
    gen = stream(tiny, steered)  # abandoned after one piece
    next(gen)
    gen.close()
    assert hook_ids(tiny) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": None}, "either a prompt or"),
        ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "either a prompt or"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max new tokens"),
        ({"seed": -1}, "seed"),
        ({"where": "everywhere"}, "where"),
        ({"block": 1, "terms": [(torch.ones(64), float("inf"))]}, "finite"),
        ({"block": 1, "terms": [(torch.ones(64), float("nan"))]}, "finite"),
        ({"block": 1, "terms": [(torch.full((64,), float("nan")), 1.0)]}, "finite values"),
        ({"terms": [(torch.ones(64), 1.0)]}, "need a block"),
    ],
)
def test_bad_requests_raise(kwargs: dict[str, Any], message: str) -> None:
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(EngineError, match=message):
        GenerationRequest(**kwargs)


def test_bad_requests_for_the_model_raise(tiny: LoadedModel) -> None:
    before = hook_ids(tiny)
    cases = [
        (req(block=1, terms=[(torch.ones(63), 1.0)]), "width 63"),
        (req(block=4, terms=[(torch.ones(64), 1.0)]), "out of range"),
        (req(PROMPT * 20, max_new_tokens=200), "context"),  # the tiny model's context is 256
        (req(max_new_tokens=250), "context"),
    ]
    for request, message in cases:
        with pytest.raises(EngineError, match=message):
            generate(tiny, [req(), request])
        with pytest.raises(EngineError, match=message):
            stream(tiny, request)
    with pytest.raises(EngineError, match="batch size"):
        generate(tiny, [req()], batch_size=0)
    assert hook_ids(tiny) == before


def test_messages(tiny: LoadedModel, tmp_path: Path) -> None:
    chat = [{"role": "user", "content": PROMPT}]
    assert format_messages(tiny.tokenizer, chat) == format_prompt(tiny.tokenizer, PROMPT)
    by_messages = GenerationRequest(messages=chat, max_new_tokens=8)
    assert generate(tiny, [by_messages]) == generate(tiny, [req(max_new_tokens=8, ignore_eos=False)])
    longer = [*chat, {"role": "assistant", "content": "Once"}, {"role": "user", "content": "More."}]
    assert format_messages(tiny.tokenizer, longer).endswith("More.<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(EngineError, match="role and a content"):
        format_messages(tiny.tokenizer, [{"content": "hi"}])
    base = load_model(str(build_model_dir(tmp_path / "base", chat=False)), device="cpu")
    assert format_messages(base.tokenizer, longer) == f"{PROMPT}\nOnce\nMore."
    assert generate(base, [GenerationRequest(messages=longer, max_new_tokens=4)])[0].n_tokens <= 4


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_batched_equals_alone_on_every_architecture(arch: str, tmp_path: Path) -> None:
    lm = load_model(str(build_model_dir(tmp_path / arch, arch)), device="cpu")
    # Different lengths: the short row leaves the batch (and the KV cache) after 3 tokens.
    rows = [req(max_new_tokens=6), req(OTHERS[1], max_new_tokens=3, block=1, terms=[(vec(64), 2.0)])]
    assert generate(lm, rows) == [generate(lm, [r])[0] for r in rows]


@pytest.mark.slow
def test_embedded_model(embedded: LoadedModel) -> None:
    question = GenerationRequest(prompt="What is the capital of France?", max_new_tokens=16)
    steered = replace(question, block=7, terms=[(vec(embedded.info.width, 60.0), 1.0)])
    plain, pushed = generate(embedded, [question, steered])
    assert "Paris" in plain.text and plain.text.isascii()
    assert pushed.token_ids != plain.token_ids
