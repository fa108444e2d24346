"""The residual stream at one block's output for token sequences, the forward stopped there.

This is the space a vector steering block s lives in: steering adds to block s's output, so the
residual read here is `hidden_states[s + 1]`, the activations a vector at block s is added to. The
blocks after s, the final norm and the LM head are skipped (a private exception ends the forward),
and the hook is always removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from engine.errors import EngineError
from engine.models import get_blocks
from engine.prompts import positions_from_mask


class _Reached(Exception):
    """Raised by the hook once the block has run: nothing after it is needed."""


def left_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Token id rows as one left-padded batch: (input_ids [B, T], attention_mask [B, T])."""
    if not rows or any(len(r) == 0 for r in rows):
        raise EngineError("every sequence needs at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


@torch.no_grad()
def block_output(model: nn.Module, block: int, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Block `block`'s output on a left-padded batch: float32 [B, T, d] (padding rows are junk)."""
    blocks = get_blocks(model)
    if not 0 <= block < len(blocks):
        raise EngineError(f"block {block} is out of range: the model has blocks 0..{len(blocks) - 1}")
    device = next(model.parameters()).device
    kept: list[Tensor] = []

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        kept.append((output[0] if isinstance(output, tuple) else output).detach())
        raise _Reached

    handle = blocks[block].register_forward_hook(keep)
    try:
        model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=positions_from_mask(attention_mask).to(device),
            use_cache=False,
        )
    except _Reached:
        pass
    finally:
        handle.remove()
    if not kept:
        raise EngineError(f"block {block} did not run in the forward pass")
    return kept[0].float()


def sequence_outputs(model: nn.Module, block: int, rows: Sequence[Sequence[int]], pad: int) -> list[Tensor]:
    """Block `block`'s output for each token id row, unpadded: a [len(row), d] float32 tensor each."""
    ids, mask = left_padded(rows, pad)
    out = block_output(model, block, ids, mask)  # [B, T, d]
    width = ids.shape[1]
    return [out[i, width - len(r) :].cpu() for i, r in enumerate(rows)]
