"""A decoding row: one request's state (its prompt, what it generated, whether it is done), and how
the next token of each row is picked from its logits (greedy, or sampled with its own seed)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor

from engine.decode.detokenizer import Detokenizer
from engine.decode.request import FinishReason, GenerationRequest


class Row:
    """One request's state: its prompt, what it generated, and whether it is done."""

    def __init__(self, key: Hashable, request: GenerationRequest, prompt: list[int], tokenizer: Any) -> None:
        self.key, self.request, self.prompt = key, request, prompt
        self.steering = b""  # digest of its prompt positions' steering (set when prefixes are kept)
        self.detok = Detokenizer(tokenizer)
        self.eos = self.stopped = self.done = False
        self.uniforms: list[float] = []
        if request.temperature > 0:
            # Drawn up front from the row's own generator: its tokens depend only on its seed and
            # its logits, never on the other rows.
            gen = torch.Generator().manual_seed(request.seed)
            self.uniforms = torch.rand(request.max_new_tokens, generator=gen).tolist()

    @property
    def tokens(self) -> list[int]:
        return self.detok.ids

    @property
    def position(self) -> int:
        """Position id of the token fed next (the last one generated)."""
        return len(self.prompt) + len(self.tokens) - 1

    def reason(self) -> FinishReason:
        if self.eos:
            return "eos"
        return "length" if len(self.tokens) >= self.request.max_new_tokens else "stopped"


def pick(logits: Tensor, rows: Sequence[Row]) -> list[int]:
    """Each row's next token from its last-position logits [B, V]."""
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if row.uniforms and not row.done]
    if not sampled:
        return [int(t) for t in greedy.tolist()]
    index = torch.tensor(sampled, device=logits.device)
    chosen = [rows[i] for i in sampled]
    temps = torch.tensor([r.request.temperature for r in chosen], device=logits.device)
    # top_p = 1 becomes inf so float rounding of the cumulative mass never drops a token.
    top_p = torch.tensor(
        [r.request.top_p if r.request.top_p < 1 else math.inf for r in chosen], device=logits.device
    )
    uniforms = torch.tensor([r.uniforms[len(r.tokens)] for r in chosen], device=logits.device)
    probs = torch.softmax(logits[index] / temps[:, None], dim=-1)
    # Sorting (stable) gives every row the same token order whatever the batch holds.
    probs, order = probs.sort(dim=-1, descending=True, stable=True)
    above = probs.cumsum(dim=-1) - probs  # [n, V] mass ranked above each token
    probs = probs.masked_fill(above >= top_p[:, None], 0.0)
    cdf = probs.cumsum(dim=-1)
    target = (uniforms * cdf[:, -1])[:, None]
    # right=True never lands on a zero-probability token.
    rank = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
    tokens = greedy.tolist()
    for i, token in zip(sampled, order.gather(-1, rank)[:, 0].tolist(), strict=True):
        tokens[i] = token
    return [int(t) for t in tokens]
