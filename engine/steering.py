"""Add steering vectors to a block's output with a forward hook that is always removed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from engine.errors import EngineError
from engine.models import get_blocks

Where = Literal["all", "prompt", "generated"]
# One steering term: a vector [d] and the scale it is added with.
Term = tuple[Tensor, float]


def combine(terms: Sequence[Term], width: int) -> Tensor:
    """Sum of scale × vector over the terms; zeros when there are none."""
    total = torch.zeros(width, dtype=torch.float32)
    for vector, scale in terms:
        if vector.shape != (width,):
            raise EngineError(
                f"a steering vector has shape {tuple(vector.shape)}, the model needs ({width},)"
            )
        if not torch.isfinite(torch.tensor(scale)):
            raise EngineError(f"steering scale must be finite, got {scale}")
        total = total + float(scale) * vector.detach().float().cpu()
    return total


def stack_rows(rows: Sequence[Sequence[Term]], width: int) -> Tensor:
    """One combined steering delta per batch row: [B, d]."""
    return torch.stack([combine(terms, width) for terms in rows]) if rows else torch.zeros(0, width)


class _Adder:
    """The hook's state: which absolute positions it has seen, where the prompt ends."""

    def __init__(self, delta: Tensor, where: Where, prompt_len: int | None) -> None:
        self.delta = delta  # [d] or [B, d]
        self.where = where
        self.prompt_len = prompt_len
        self.seen = 0

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output  # [B, T, d]
        batch, length = hidden.shape[0], hidden.shape[1]
        start, self.seen = self.seen, self.seen + length
        if self.prompt_len is None:
            self.prompt_len = length  # the first call is the prompt (prefill)
        delta = self.delta.to(device=hidden.device, dtype=hidden.dtype)
        if delta.dim() == 2:
            if delta.shape[0] != batch:
                raise EngineError(f"steering has {delta.shape[0]} rows but the batch has {batch}")
            add = delta[:, None, :]
        else:
            add = delta[None, None, :]
        if self.where != "all":
            pos = torch.arange(start, start + length, device=hidden.device)
            keep = pos < self.prompt_len if self.where == "prompt" else pos >= self.prompt_len
            if not bool(keep.any()):
                return output
            add = add * keep[None, :, None].to(hidden.dtype)
        steered = hidden + add
        return (steered, *output[1:]) if isinstance(output, tuple) else steered


@contextmanager
def steer(
    model: nn.Module,
    block: int,
    delta: Tensor | None,
    *,
    where: Where = "all",
    prompt_len: int | None = None,
) -> Iterator[None]:
    """Within the block, every forward adds `delta` ([d], or [B, d] per row) to block `block`'s output.

    `where` limits it to prompt or generated positions; the prompt is the first forward's tokens
    unless `prompt_len` says otherwise. A None delta steers nothing (and registers no hook).
    """
    if where not in ("all", "prompt", "generated"):
        raise EngineError(f"where must be all, prompt or generated, got {where!r}")
    blocks = get_blocks(model)
    if not 0 <= block < len(blocks):
        raise EngineError(f"block {block} is out of range: the model has blocks 0..{len(blocks) - 1}")
    if delta is None:
        yield
        return
    if not bool(torch.isfinite(delta).all()):
        raise EngineError("steering vector contains NaN or infinite values")
    # Not detached: the MELBO reference mode trains through this hook.
    handle = blocks[block].register_forward_hook(_Adder(delta, where, prompt_len))
    try:
        yield
    finally:
        handle.remove()
