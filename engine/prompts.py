"""Chat formatting, left-padded prompt batches and the choice of target token positions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.errors import EngineError

# Target positions of an objective. Reading every position would let the chat template's shared
# preamble (system prompt, first token) dominate it: DCT, adapters and calibration read the user
# turn by default. MELBO's objective (a run, and a vector trained further) reads the last 3 tokens:
# on a chat model the end of the template's opening of the reply, where the model settles how it
# will answer. On the discovery suite's tuning half 0.29 of the vectors were beyond their random
# twin and fluent with them, against 0.04 on the user turn (docs/benchmarks.md).
POSITION_CHOICES = ("user", "prompt", "all", "last:<k>")
MELBO_POSITIONS = "last:3"


def format_prompt(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """The text the model sees for one user message: its chat template, or the plain prompt."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(text)


def format_messages(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The text the model sees for a conversation ({"role", "content"} dicts), ready for its reply.

    Without a chat template (base models) the contents are joined by newlines.
    """
    if not messages:
        raise EngineError("give at least one message")
    for m in messages:
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise EngineError("every message needs a role and a content, both text")
    if not getattr(tokenizer, "chat_template", None):
        return "\n".join(m["content"] for m in messages)
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    return str(text)


@dataclass
class PromptBatch:
    input_ids: Tensor  # [P, T] left-padded
    attention_mask: Tensor  # [P, T] 1 for real tokens
    position_ids: Tensor  # [P, T] positions counted from each row's first real token
    user_mask: Tensor  # [P, T] bool: the user message through the end of the prompt
    texts: list[str]  # rendered prompts
    # Rows whose user message the chat template changed (so it cannot be found in the rendered text).
    unmatched: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> Tensor:
        return self.attention_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.user_mask.to(device),
            self.texts,
            self.unmatched,
        )

    def model_inputs(self) -> dict[str, Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    # HF derives positions from the mask only inside generate(); a plain forward needs them given.
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _encode_one(tokenizer: Any, prompt: str, chat: bool) -> tuple[list[int], int | None, str]:
    """Token ids of one rendered prompt and the index of its first user-message token (None when
    the template changed the message so that it is not in the rendered text)."""
    text = format_prompt(tokenizer, prompt) if chat else prompt
    templated = text != prompt
    # A rendered chat template already carries its special tokens; a plain prompt gets BOS etc.
    enc = tokenizer(text, add_special_tokens=not templated, return_offsets_mapping=tokenizer.is_fast)
    ids = list(enc["input_ids"])
    if not templated:
        # Plain prompts: every token belongs to the user; a leading BOS (if any) does not.
        return ids, (1 if ids and ids[0] == tokenizer.bos_token_id and len(ids) > 1 else 0), text
    # Templates that trim the message still hold it whole; any other change loses the user turn.
    start_char = text.rfind(prompt) if prompt else len(text)
    if start_char < 0 and prompt.strip():
        start_char = text.rfind(prompt.strip())
    if start_char < 0:
        return ids, None, text
    if tokenizer.is_fast:
        offsets = enc["offset_mapping"]
        first = next((i for i, (_, end) in enumerate(offsets) if end > start_char), len(ids) - 1)
    else:
        first = len(tokenizer(text[:start_char], add_special_tokens=False)["input_ids"])
    return ids, min(first, len(ids) - 1), text


def encode_prompts(tokenizer: Any, prompts: Sequence[str], *, chat: bool = True) -> PromptBatch:
    """Render and tokenize prompts into one left-padded batch."""
    if not prompts:
        raise EngineError("give at least one prompt")
    rows = [_encode_one(tokenizer, p, chat) for p in prompts]
    width = max(len(ids) for ids, _, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    user = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (ids, first_user, _) in enumerate(rows):
        offset = width - len(ids)
        input_ids[r, offset:] = torch.tensor(ids, dtype=torch.long)
        attention[r, offset:] = 1
        if first_user is not None:
            user[r, offset + first_user :] = True
    unmatched = tuple(r for r, (_, first_user, _) in enumerate(rows) if first_user is None)
    texts = [t for _, _, t in rows]
    return PromptBatch(input_ids, attention, positions_from_mask(attention), user, texts, unmatched)


def target_mask(batch: PromptBatch, positions: str) -> Tensor:
    """Boolean [P, T] mask of the token positions the objective reads."""
    real = batch.attention_mask.bool()
    if positions == "all":
        return real
    if positions == "prompt":
        # Every real token but the first: the first is an attention sink with a huge residual norm.
        first = real.long().cumsum(dim=1) == 1
        return real & ~first
    if positions == "user":
        if batch.unmatched:
            which = ", ".join(str(r + 1) for r in batch.unmatched)
            raise EngineError(
                f"positions 'user': the chat template changes the text of prompt {which}, so its user "
                "turn cannot be found in what the model reads; choose positions prompt, all or last:k"
            )
        return batch.user_mask & real
    if positions.startswith("last:"):
        try:
            k = int(positions.split(":", 1)[1])
        except ValueError:
            k = 0
        if k < 1:
            raise EngineError(f"positions {positions!r}: k in last:k must be a positive integer")
        from_end = real.long().flip(1).cumsum(dim=1).flip(1)  # 1 at the last real token
        return real & (from_end <= k)
    raise EngineError(f"unknown target positions {positions!r}: choose one of {', '.join(POSITION_CHOICES)}")


def encode_targets(
    tokenizer: Any, prompts: Sequence[str], positions: str, context_length: int, device: torch.device
) -> tuple[PromptBatch, Tensor]:
    """A training run's prompts on its device and their target positions, refused with the reason
    when a prompt does not fit the model's context or the positions select nothing in one."""
    batch = encode_prompts(tokenizer, prompts).to(device)
    if batch.input_ids.shape[1] > context_length:
        raise EngineError(
            f"a prompt is {batch.input_ids.shape[1]} tokens long; the model's context is {context_length}"
        )
    mask = target_mask(batch, positions)
    if not bool(mask.any(dim=1).all()):
        raise EngineError(f"positions {positions!r} select no token in some prompt")
    return batch, mask
