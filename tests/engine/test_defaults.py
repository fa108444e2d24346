"""Following the reference: the default source block, MELBO's default positions, and positions "user"
(DCT's and adapters' default) that must find the user turn."""

from __future__ import annotations

import copy

import pytest

from engine.errors import EngineError
from engine.methods.melbo import MelboTrainer
from engine.models import LoadedModel
from engine.prompts import encode_prompts, target_mask
from engine.specs import AdapterSpec, DctSpec, MelboSpec, default_source, default_target
from engine.validate import check_spec


@pytest.mark.parametrize(("blocks", "source"), [(24, 7), (30, 7), (16, 7), (40, 7), (12, 3), (4, 1), (1, 0)])
def test_default_source_is_seven_where_the_model_is_deep_enough(blocks: int, source: int) -> None:
    assert default_source(blocks) == source
    if blocks >= 3:
        assert source + 2 <= default_target(blocks, source) <= blocks - 1


def test_a_trimmed_prompt_still_finds_its_user_turn(tiny: LoadedModel) -> None:
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "message['content']", "message['content'] | trim"
    )
    batch = encode_prompts(tokenizer, ["  Tell me a story  "])
    mask = target_mask(batch, "user")
    assert batch.unmatched == () and 0 < int(mask.sum()) < int(batch.attention_mask.sum())


def test_positions_user_is_refused_when_the_template_changes_the_prompt(tiny: LoadedModel) -> None:
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "message['content']", "message['content'] | upper"
    )
    changed = type(tiny)(tiny.model, tokenizer, tiny.info)
    batch = encode_prompts(tokenizer, ["Tell me a story", "HELLO"])
    assert batch.unmatched == (0,)
    with pytest.raises(EngineError, match="changes the text of prompt 1"):
        target_mask(batch, "user")
    assert bool(target_mask(batch, "prompt").any())  # other positions still work
    spec = {"prompts": ["Tell me a story"], "source": 0, "target": 3, "positions": "user"}
    with pytest.raises(EngineError, match="choose positions prompt, all or last:k"):
        check_spec(changed, "melbo", spec)
    with pytest.raises(EngineError, match="user turn cannot be found"):
        MelboTrainer(changed, MelboSpec.from_dict(spec))
    check_spec(changed, "melbo", {**spec, "positions": "last:2"})
    check_spec(changed, "melbo", {k: v for k, v in spec.items() if k != "positions"})  # MELBO's default


def test_melbo_reads_the_last_three_tokens_by_default(tiny: LoadedModel) -> None:
    """MELBO's default positions are the prompt's last 3 tokens (on a chat model, the template's
    opening of the reply); DCT and adapters keep the user turn."""
    assert MelboSpec(prompts=("Hi",)).positions == "last:3"
    assert DctSpec(prompts=("Hi",)).positions == AdapterSpec(prompts=("Hi",)).positions == "user"
    batch = encode_prompts(tiny.tokenizer, ["Hi", "Tell me a much longer story about a fox"])
    mask = target_mask(batch, "last:3")
    assert mask.sum(dim=1).tolist() == [3, 3]
    real = batch.attention_mask.bool()
    for row in range(2):
        last = int(real[row].nonzero().max())
        assert mask[row, last - 2 : last + 1].all()
