"""Prompt prefixes kept across requests, so that a turn of a conversation does not prefill its whole
history again, nor any conversation the chat template's system prompt.

A decoder keeps (per model) the KV cache of every prompt it prefilled and of every finished row
(prompt and reply together, when the reply was steered as a later prompt holding it would be).
An entry is keyed by its token ids and by the steering of its prompt positions: a digest of the
vectors' values, their scales, the block and any adapter's factors, never an id, so two rows share
an entry exactly when their prompt positions are computed alike. Attention is causal, so the first
n positions of any entry serve every prompt that starts with the same n tokens: a joining row takes
the longest prefix it shares with an entry of its steering, and only the rest of its prompt is
prefilled. Entries are dropped least recently used first once their size passes the budget.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.decode.request import GenerationRequest

Layers = list[tuple[Tensor, Tensor]]  # per layer: keys and values [heads, n, head_dim]


def _digest_tensor(h: hashlib._Hash, tensor: Tensor) -> None:
    h.update(str(tuple(tensor.shape)).encode())
    h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())


def prompt_steering(request: GenerationRequest) -> bytes:
    """A digest of what changes the request's prompt positions: its vectors (values and scales) and
    block when they steer the prompt, and its adapter."""
    h = hashlib.sha256()
    if request.terms and request.where in ("all", "prompt"):
        h.update(f"vectors at block {request.block}".encode())
        for vector, scale in request.terms:
            _digest_tensor(h, vector)
            h.update(struct.pack("<d", float(scale)))
    adapter = request.adapter
    if adapter is not None:
        h.update(f"adapter at block {adapter.block}".encode())
        h.update(struct.pack("<dd", float(adapter.radius), float(adapter.scale)))
        _digest_tensor(h, adapter.down)
        _digest_tensor(h, adapter.up)
    return h.digest()


def reply_reusable(request: GenerationRequest) -> bool:
    """Whether a reply's positions are steered as they will be once the reply is part of a later
    prompt (unsteered, steered everywhere, or by an adapter, which acts everywhere)."""
    return not request.terms or request.where == "all"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two tuples share (slice comparisons run in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n - 1
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


@dataclass
class _Entry:
    layers: Layers
    size: int  # bytes


@dataclass
class Stats:
    rows: int = 0  # rows that looked for a prefix
    hits: int = 0  # rows that reused one
    prompt_tokens: int = 0
    reused_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.rows if self.rows else 0.0

    @property
    def token_share(self) -> float:
        """Share of prompt tokens not prefilled again."""
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class PrefixCache:
    """Kept prompt prefixes of one model, at most `budget` bytes of keys and values."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: OrderedDict[tuple[bytes, tuple[int, ...]], _Entry] = OrderedDict()
        self.size = 0
        self.stats = Stats()
        self.usable: bool | None = None  # None until a prefill shows whether the model's cache fits

    def longest(self, steering: bytes, ids: tuple[int, ...], limit: int) -> tuple[int, Layers | None]:
        """The longest kept prefix of `ids` (at most `limit` tokens) under this steering: its length
        and its layers (0, None when none)."""
        best, found = 0, None
        for key in self.entries:
            if key[0] == steering:
                n = min(common_prefix(key[1], ids), limit)
                if n > best:
                    best, found = n, key
        self.stats.rows += 1
        self.stats.prompt_tokens += len(ids)
        if found is None:
            return 0, None
        self.entries.move_to_end(found)
        self.stats.hits += 1
        self.stats.reused_tokens += best
        return best, self.entries[found].layers

    def keep(self, steering: bytes, ids: tuple[int, ...], read: Callable[[], Layers]) -> None:
        """Keep an entry, the KV of exactly `ids` (`read()` gives them, only when they are kept); one
        that an entry already covers is not kept twice, and one it covers is dropped."""
        if self.budget <= 0 or not ids:
            return
        for key in list(self.entries):
            if key[0] != steering:
                continue
            shared = common_prefix(key[1], ids)
            if shared == len(ids):  # already covered (the same ids or an extension of them)
                self.entries.move_to_end(key)
                return
            if shared == len(key[1]):  # this one extends a kept entry: it replaces it
                self.size -= self.entries.pop(key).size
        layers = read()
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if size > self.budget:
            return
        self.entries[(steering, ids)] = _Entry(layers, size)
        self.size += size
        while self.size > self.budget:
            _, dropped = self.entries.popitem(last=False)
            self.size -= dropped.size
