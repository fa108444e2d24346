"""Room to grow for a decoding batch's KV cache, so a decode step writes its column in place.

transformers' dynamic layer concatenates each new column onto the keys and values it holds: a copy
of the whole cache for every token, a fifth of a decode step for 32 rows of the embedded model at
140 tokens. `with_room` swaps each full-attention layer of a cache for one that keeps spare columns
and appends into them; it copies only when the room runs out or when the batch changed shape (a
join, a trim or a selection gave the layer new tensors, with no room behind them).

Imported by the decoder's first prefill, so that importing the engine does not load transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer

# Spare columns: a quarter of the length again, or 32 if that is more. Each copy then pays for a
# quarter of the columns to come, and a long cache holds at most a quarter more than it uses (on a
# GPU near its memory limit that matters more than the copies).
MIN_ROOM = 32


def _append(states: Tensor, room: Tensor | None, new: Tensor) -> tuple[Tensor, Tensor]:
    """`states` with `new` appended along the sequence, and the buffer the result is a view of."""
    length = states.shape[2] if states.dim() == 4 else 0
    total = length + new.shape[2]
    fits = (
        room is not None
        and length > 0
        and states.data_ptr() == room.data_ptr()
        and states.stride() == room.stride()
        and states.shape[:2] == room.shape[:2]
        and total <= room.shape[2]
    )
    if not fits:
        batch, heads, _, dim = new.shape
        room = new.new_empty(batch, heads, total + max(MIN_ROOM, total // 4), dim)
        if length:
            room[:, :, :length] = states
    assert room is not None
    room[:, :, length:total] = new
    return room[:, :, :total], room


class RoomyLayer(DynamicLayer):
    """A full-attention cache layer whose keys and values are the first columns of larger buffers."""

    def __init__(self, layer: DynamicLayer) -> None:
        super().__init__()
        vars(self).update(vars(layer))
        self.key_room: Tensor | None = None
        self.value_room: Tensor | None = None

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.keys is not None and self.values is not None
        self.keys, self.key_room = _append(self.keys, self.key_room, key_states)
        self.values, self.value_room = _append(self.values, self.value_room, value_states)
        return self.keys, self.values


def with_room(cache: Any) -> Any:
    """The same cache (changed in place) with its full-attention layers appending in place."""
    cache.layers = [RoomyLayer(layer) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


Kept = list[tuple[Tensor, Tensor]] | None  # a row's kept layers: keys and values [heads, n, head_dim]


def from_rows(rows: list[tuple[int, Kept]], width: int, dtype: Any, device: Any) -> Any:
    """A cache of `width` columns holding, right-aligned in each row, the first n columns of that row's
    kept layers (engine/decode/prefixes.py); zeros (masked out) elsewhere."""
    sample = next(layers for _, layers in rows if layers is not None)
    pairs = []
    for layer, (keys, _) in enumerate(sample):
        shape = (len(rows), keys.shape[0], width, keys.shape[2])
        k, v = torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
        for i, (n, layers) in enumerate(rows):
            if layers is not None and n:
                k[i, :, width - n :] = layers[layer][0][:, :n]
                v[i, :, width - n :] = layers[layer][1][:, :n]
        pairs.append((k, v))
    return DynamicCache(pairs)
