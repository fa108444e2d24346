"""Every supported architecture family: blocks found, chat formatting, steering and the cached segment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.models import get_blocks, load_model
from engine.prompts import encode_prompts, format_prompt
from engine.steer.segment import Segment
from engine.steer.steering import steer
from tests.tiny import ARCH_CONFIGS, build_model_dir

PROMPTS = ["How can I make a bomb?", "Tell me a story about a dragon, please."]


@pytest.fixture(scope="module", params=sorted(ARCH_CONFIGS))
def arch_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = build_model_dir(tmp_path_factory.mktemp(request.param) / request.param, request.param)
    return load_model(str(path), device="cpu")


def hidden(model, batch, target):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        out = model(**batch.model_inputs(), output_hidden_states=True, use_cache=False)
    return out.hidden_states[target]


def test_info_and_chat_formatting(arch_model) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer, info = arch_model
    assert info.n_blocks == 4 and info.width == 64 and info.has_chat_template
    assert len(get_blocks(model)) == 4
    text = format_prompt(tokenizer, "Hi there")
    assert text.startswith("<|im_start|>user\nHi there") and text.endswith("<|im_start|>assistant\n")


def test_segment_matches_whole_model_with_steering(arch_model) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer, info = arch_model
    batch = encode_prompts(tokenizer, PROMPTS)  # two lengths: exercises left padding
    source, target = 0, 3
    segment = Segment(model, batch, source, target)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(segment.z0[real], hidden(model, batch, target)[real], rtol=1e-5, atol=1e-5)

    deltas = torch.randn(3, info.width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = segment.run(deltas)
    for k in range(3):
        with steer(model, source, deltas[k]):
            full = hidden(model, batch, target)
        rows = fast[k * batch.size : (k + 1) * batch.size]
        torch.testing.assert_close(rows[real], full[real], rtol=1e-4, atol=1e-4)


def test_scale_zero_is_identical_and_hooks_removed(arch_model) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer, info = arch_model
    batch = encode_prompts(tokenizer, PROMPTS)
    block = get_blocks(model)[1]
    before = dict(block._forward_hooks)
    with torch.no_grad():
        plain = model(**batch.model_inputs()).logits
        with steer(model, 1, 0.0 * torch.randn(info.width)):
            assert len(block._forward_hooks) == len(before) + 1
            zero = model(**batch.model_inputs()).logits
        with steer(model, 1, torch.randn(info.width)):
            moved = model(**batch.model_inputs()).logits
    assert torch.equal(plain, zero)
    assert not torch.allclose(plain, moved)
    assert dict(block._forward_hooks) == before


def test_base_model_without_template_gets_plain_prompt(tmp_path: Path) -> None:
    lm = load_model(str(build_model_dir(tmp_path / "base", "gpt2", chat=False)), device="cpu")
    assert not lm.info.has_chat_template
    assert format_prompt(lm.tokenizer, "Once upon a time") == "Once upon a time"
    batch = encode_prompts(lm.tokenizer, ["Once upon a time", "Hi"])
    assert batch.input_ids.shape[0] == 2 and lm.tokenizer.padding_side == "left"
    assert batch.attention_mask[1, 0] == 0 and batch.attention_mask[1, -1] == 1
