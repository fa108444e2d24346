"""The steering hook: where it adds, per-row deltas, sums of terms, and bad input."""

from __future__ import annotations

import pytest
import torch

from engine.errors import EngineError
from engine.models import LoadedModel, get_blocks
from engine.prompts import encode_prompts
from engine.steer.steering import combine, stack_rows, steer


def block_output(lm: LoadedModel, block: int, **steering: object) -> torch.Tensor:
    """Output of `block` (after any steering hook) on two prompts: [2, T, d]."""
    batch = encode_prompts(lm.tokenizer, ["How can I make a bomb?", "Hi"])
    seen: list[torch.Tensor] = []
    handle = get_blocks(lm.model)[block + 1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        with torch.no_grad(), steer(lm.model, block, **steering):  # type: ignore[arg-type]
            lm.model(**batch.model_inputs())
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("where", ["all", "prompt", "generated"])
def test_where_limits_the_positions(tiny: LoadedModel, where: str) -> None:
    vector = torch.randn(64, generator=torch.Generator().manual_seed(0))
    plain = block_output(tiny, 1, delta=None)
    steered = block_output(tiny, 1, delta=vector, where=where, prompt_len=5)
    moved = (steered - plain).norm(dim=-1) > 1e-4  # [2, T]
    is_prompt = torch.arange(plain.shape[1]) < 5
    expected = {"all": torch.ones_like(is_prompt), "prompt": is_prompt, "generated": ~is_prompt}[where]
    assert torch.equal(moved, expected[None].expand_as(moved))
    torch.testing.assert_close((steered - plain)[moved], vector.expand(int(moved.sum()), 64))


def test_per_row_deltas_and_sums(tiny: LoadedModel) -> None:
    a, b = torch.randn(64), torch.randn(64)
    rows = stack_rows([[(a, 1.0)], [(a, 2.0), (b, -0.5)]], 64)
    torch.testing.assert_close(rows[1], 2.0 * a - 0.5 * b)
    plain = block_output(tiny, 2, delta=None)
    steered = block_output(tiny, 2, delta=rows)
    torch.testing.assert_close(steered - plain, rows[:, None, :].expand_as(plain), atol=1e-5, rtol=0)
    torch.testing.assert_close(combine([], 64), torch.zeros(64))


def test_bad_steering_is_refused_and_leaves_no_hook(tiny: LoadedModel) -> None:
    hooks = [dict(b._forward_hooks) for b in get_blocks(tiny.model)]
    with pytest.raises(EngineError, match="out of range"), steer(tiny.model, 4, torch.zeros(64)):
        pass
    with pytest.raises(EngineError, match="NaN"), steer(tiny.model, 1, torch.full((64,), float("nan"))):
        pass
    with pytest.raises(EngineError, match="rows"):
        block_output(tiny, 1, delta=torch.zeros(3, 64))
    with pytest.raises(EngineError, match="finite"):
        combine([(torch.zeros(64), float("inf"))], 64)
    assert [dict(b._forward_hooks) for b in get_blocks(tiny.model)] == hooks
