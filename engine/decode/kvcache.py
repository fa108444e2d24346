"""A decoding batch's KV cache changing shape while the batch runs: rows join, leave, and the
padding every row shares is cut away.

Works on transformers' dynamic cache layers, full or sliding-window. Each holds keys and values as
[batch, heads, columns, head_dim], right-aligned with the sequence: a left-padded row has zeros
(masked out by the attention mask) in its first columns.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# By name: importing transformers here would load it (and its web-side dependencies) with the engine.
_KNOWN = ("DynamicLayer", "DynamicSlidingWindowLayer", "RoomyLayer")


def reshapable(cache: Any) -> bool:
    """Whether rows can join this cache (other cache kinds make new rows wait for an empty batch)."""
    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(type(layer).__name__ in _KNOWN for layer in layers)


def plain(cache: Any) -> bool:
    """Whether every layer keeps every column (full attention): what a kept prefix needs."""
    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(type(layer).__name__ in ("DynamicLayer", "RoomyLayer") for layer in layers)


def _columns(layer: Any, length: int) -> int:
    """Columns a layer keeps for a sequence of `length` tokens (a sliding window keeps fewer)."""
    if getattr(layer, "is_sliding", False):
        return min(length, int(layer.sliding_window) - 1)
    return length


def _fit(states: Tensor, pad: int, keep: int) -> Tensor:
    """Left-pad [B, H, C, D] with `pad` zero columns, then keep the last `keep` columns."""
    if pad > 0:
        zeros = states.new_zeros(states.shape[0], states.shape[1], pad, states.shape[3])
        states = torch.cat([zeros, states], dim=2)
    return states[:, :, states.shape[2] - keep :] if keep < states.shape[2] else states


def _set_length(layer: Any, length: int) -> None:
    if getattr(layer, "is_sliding", False):
        layer.cumulative_length = length


def join(cache: Any, length: int, other: Any, other_length: int) -> int:
    """Append the rows of `other` to `cache` (in place), both left-padded to a common length.

    `length` and `other_length` are the sequence lengths the caches cover (their attention masks'
    widths); returns the common one.
    """
    total = max(length, other_length)
    for mine, theirs in zip(cache.layers, other.layers, strict=True):
        keep = _columns(mine, total)
        mine.keys = torch.cat(
            [_fit(mine.keys, total - length, keep), _fit(theirs.keys, total - other_length, keep)]
        )
        mine.values = torch.cat(
            [_fit(mine.values, total - length, keep), _fit(theirs.values, total - other_length, keep)]
        )
        _set_length(mine, total)
    return total


def trim(cache: Any, length: int, columns: int) -> int:
    """Drop the first `columns` columns (padding in every row); returns the new length."""
    new = length - columns
    for layer in cache.layers:
        keep = _columns(layer, new)
        layer.keys, layer.values = _fit(layer.keys, 0, keep), _fit(layer.values, 0, keep)
        _set_length(layer, new)
    return new


def snapshot(cache: Any) -> list[tuple[Tensor, Tensor, int | None]]:
    """What each layer holds now. Layers replace their tensors as they grow and never write into
    them, so keeping the references is enough for `restore` to undo a forward pass's writes."""
    return [(layer.keys, layer.values, getattr(layer, "cumulative_length", None)) for layer in cache.layers]


def restore(cache: Any, saved: list[tuple[Tensor, Tensor, int | None]]) -> None:
    """Put back what `snapshot` saw (a forward pass given up halfway wrote to some layers only)."""
    for layer, (keys, values, length) in zip(cache.layers, saved, strict=True):
        layer.keys, layer.values = keys, values
        if length is not None:
            layer.cumulative_length = length


def select(cache: Any, rows: Tensor) -> None:
    """Keep only these batch rows, in this order."""
    cache.batch_select_indices(rows)
