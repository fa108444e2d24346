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


class Adder:
    """Forward hook adding a delta to a block's output: one for prompt positions, one for generated.

    Each delta is [d] (every row) or [B, d] (one per row), or None for no change in that phase.
    Positions are counted across forwards, so with a KV cache the first forward is the prompt.
    """

    def __init__(
        self, prompt: Tensor | None, generated: Tensor | None, prompt_len: int | None = None
    ) -> None:
        self.deltas = (prompt, generated)
        self.prompt_len = prompt_len
        self.seen = 0

    def select(self, keep: Tensor) -> None:
        """Keep only these batch rows (decoding drops finished rows from its batch)."""
        prompt, generated = (d[keep] if d is not None and d.dim() == 2 else d for d in self.deltas)
        self.deltas = (prompt, generated)

    def _shaped(self, delta: Tensor | None, hidden: Tensor) -> Tensor | None:
        if delta is None:
            return None
        delta = delta.to(device=hidden.device, dtype=hidden.dtype)
        if delta.dim() == 1:
            return delta[None, None, :]
        if delta.shape[0] != hidden.shape[0]:
            raise EngineError(f"steering has {delta.shape[0]} rows but the batch has {hidden.shape[0]}")
        return delta[:, None, :]

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output  # [B, T, d]
        length = hidden.shape[1]
        start, self.seen = self.seen, self.seen + length
        if self.prompt_len is None:
            self.prompt_len = length  # the first call is the prompt (prefill)
        in_prompt = max(0, min(length, self.prompt_len - start))  # this call's prompt positions
        prompt = self._shaped(self.deltas[0], hidden) if in_prompt > 0 else None
        generated = self._shaped(self.deltas[1], hidden) if in_prompt < length else None
        if in_prompt == length:
            add = prompt
        elif in_prompt == 0:
            add = generated
        elif prompt is None and generated is None:
            add = None
        else:  # one forward over prompt and continuation together
            zero = hidden.new_zeros(())
            is_prompt = (torch.arange(length, device=hidden.device) < in_prompt)[None, :, None]
            add = torch.where(
                is_prompt, zero if prompt is None else prompt, zero if generated is None else generated
            )
        if add is None:
            return output
        steered = hidden + add
        return (steered, *output[1:]) if isinstance(output, tuple) else steered


@contextmanager
def adding(model: nn.Module, block: int, hook: Adder) -> Iterator[Adder]:
    """Register an Adder on a block for the duration of the context; it is always removed."""
    blocks = get_blocks(model)
    if not 0 <= block < len(blocks):
        raise EngineError(f"block {block} is out of range: the model has blocks 0..{len(blocks) - 1}")
    handle = blocks[block].register_forward_hook(hook)
    try:
        yield hook
    finally:
        handle.remove()


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
    if delta is not None and not bool(torch.isfinite(delta).all()):
        raise EngineError("steering vector contains NaN or infinite values")
    # Not detached: the MELBO and chain reference modes train through this hook.
    prompt = delta if where in ("all", "prompt") else None
    generated = delta if where in ("all", "generated") else None
    with adding(model, block, Adder(prompt, generated, prompt_len)):
        yield
