"""One generation request (a prompt or a conversation, steering, seed, sampling), its result, and
the checks and encoding it meets before any decoding."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from engine.errors import EngineError
from engine.methods.adapters import Adapter, mlp_out
from engine.models import LoadedModel
from engine.prompts import format_messages, format_prompt
from engine.specs import MAX_NEW_TOKENS
from engine.steer.steering import Term, Where

FinishReason = Literal["eos", "length", "stopped"]
# A stop request: an event someone sets, or a callable asked between tokens.
Stop = threading.Event | Callable[[], bool] | None


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no plain truth value to compare by
class GenerationRequest:
    """One row: a prompt (or a conversation), optional steering, seed and sampling settings."""

    prompt: str | None = None  # one user message, formatted with the model's chat template
    messages: Sequence[Mapping[str, str]] | None = None  # or a conversation of {role, content}
    block: int | None = None  # the block whose output the terms are added to
    terms: Sequence[Term] = ()  # (vector [d], scale) pairs; none = unsteered
    where: Where = "all"  # steer prompt positions, generated ones, or both (vectors only)
    adapter: Adapter | None = None  # a steering adapter, at every position, beside any vectors
    seed: int = 0
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling mass; 1 = the whole distribution
    ignore_eos: bool = False  # keep decoding past EOS (fixed-length benchmarks)

    def __post_init__(self) -> None:
        # Lists are accepted for convenience; store tuples so the request stays immutable.
        object.__setattr__(self, "terms", tuple(self.terms))
        if self.messages is not None:
            object.__setattr__(self, "messages", tuple(self.messages))
        if (self.prompt is None) == (self.messages is None):
            raise EngineError("give either a prompt or a list of messages")
        if self.prompt is not None and not self.prompt.strip():
            raise EngineError("the prompt is empty")
        if self.messages is not None and not any(str(m.get("content", "")).strip() for m in self.messages):
            raise EngineError("the conversation is empty")
        if self.terms and self.block is None:
            raise EngineError("steering terms need a block to steer")
        if self.where not in ("all", "prompt", "generated"):
            raise EngineError(f"where must be all, prompt or generated, got {self.where!r}")
        for vector, scale in self.terms:
            if not isinstance(scale, int | float) or not math.isfinite(scale):
                raise EngineError(f"steering scale must be a finite number, got {scale}")
            if not isinstance(vector, Tensor) or vector.dim() != 1 or not bool(torch.isfinite(vector).all()):
                raise EngineError("a steering vector must be a 1-D tensor of finite values (no NaN or inf)")
        if self.adapter is not None and not isinstance(self.adapter, Adapter):
            raise EngineError("an adapter must be an engine Adapter")
        if not 0 <= self.seed < 2**63:
            raise EngineError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise EngineError(
                f"max new tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens}"
            )
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise EngineError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise EngineError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: tuple[int, ...]  # the generated tokens, EOS excluded
    n_tokens: int
    finish_reason: FinishReason


def stopped(stop: Stop) -> bool:
    if stop is None:
        return False
    return stop.is_set() if isinstance(stop, threading.Event) else bool(stop())


def prompt_tokens(lm: LoadedModel, req: GenerationRequest) -> int:
    """Run every check a request meets before decoding (blocks, widths, context); its prompt length."""
    return len(encode_request(lm, req))


def encode_request(lm: LoadedModel, req: GenerationRequest) -> list[int]:
    """Prompt token ids of one request, after the checks that need the model."""
    _, tokenizer, info = lm
    if req.block is not None and not 0 <= req.block < info.n_blocks:
        raise EngineError(f"block {req.block} is out of range: the model has blocks 0..{info.n_blocks - 1}")
    for vector, _ in req.terms:
        if vector.shape != (info.width,):
            raise EngineError(f"a steering vector has width {vector.shape[0]}, the model needs {info.width}")
    if req.adapter is not None:
        check_adapter(lm, req.adapter)
    if req.prompt is not None:
        text = format_prompt(tokenizer, req.prompt)
    else:
        text = format_messages(tokenizer, req.messages or ())
    # A rendered chat template carries its own special tokens; plain text gets BOS etc.
    templated = bool(getattr(tokenizer, "chat_template", None))
    ids = list(tokenizer(text, add_special_tokens=not templated)["input_ids"])
    if not ids:
        raise EngineError("the prompt has no tokens")
    if len(ids) + req.max_new_tokens > info.context_length:
        raise EngineError(
            f"the prompt has {len(ids)} tokens; with {req.max_new_tokens} new tokens that exceeds "
            f"the model's context of {info.context_length} tokens"
        )
    return ids


def check_adapter(lm: LoadedModel, adapter: Adapter) -> None:
    """The adapter fits the model: its block exists and its factors have the projection's shapes."""
    _, _, info = lm
    if not 0 <= adapter.block < info.n_blocks:
        raise EngineError(
            f"adapter block {adapter.block} is out of range: the model has blocks 0..{info.n_blocks - 1}"
        )
    projection = mlp_out(lm.model, adapter.block)
    if adapter.down.shape[0] != projection.in_features or adapter.up.shape[0] != projection.out_features:
        raise EngineError(
            f"the adapter's factors are [{adapter.down.shape[0]}, r] and [{adapter.up.shape[0]}, r]; block "
            f"{adapter.block}'s MLP output projection needs [{projection.in_features}, r] and "
            f"[{projection.out_features}, r]"
        )
