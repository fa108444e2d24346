"""Steered text generation: many rows decoded together, each with its own steering and seed, and a
streaming path for chat that gives the same text as the batched one."""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from engine.errors import EngineError
from engine.models import LoadedModel
from engine.prompts import format_messages, format_prompt, positions_from_mask
from engine.specs import MAX_NEW_TOKENS
from engine.steering import Adder, Term, Where, adding, stack_rows

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
    where: Where = "all"  # steer prompt positions, generated ones, or both
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


def _stopped(stop: Stop) -> bool:
    if stop is None:
        return False
    return stop.is_set() if isinstance(stop, threading.Event) else bool(stop())


def prompt_tokens(lm: LoadedModel, req: GenerationRequest) -> int:
    """Run every check a request meets before decoding (blocks, widths, context); its prompt length."""
    return len(_encode(lm, req))


def _encode(lm: LoadedModel, req: GenerationRequest) -> list[int]:
    """Prompt token ids of one request, after the checks that need the model."""
    _, tokenizer, info = lm
    if req.block is not None and not 0 <= req.block < info.n_blocks:
        raise EngineError(f"block {req.block} is out of range: the model has blocks 0..{info.n_blocks - 1}")
    for vector, _ in req.terms:
        if vector.shape != (info.width,):
            raise EngineError(f"a steering vector has width {vector.shape[0]}, the model needs {info.width}")
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


class _Batch:
    """Tensors and per-row state of one decoding batch (rows may be steered at different blocks).

    Finished rows are dropped from the batch as it goes (`shrink`): per-row tensors then cover the
    live rows only, `active` maps them to request indices; tokens, count, eos_hit stay full-size.
    """

    # Per-row tensors indexed by live row (gen_pos too, along its second axis).
    _ROWS = ("active", "live", "mask", "limit", "ignore_eos", "greedy", "temps", "top_p", "uniforms")

    def __init__(self, lm: LoadedModel, requests: Sequence[GenerationRequest], rows: list[list[int]]) -> None:
        model, tokenizer, info = lm
        param = next(model.parameters())
        dev, dtype = param.device, param.dtype
        self.requests = requests
        b, t, s = len(rows), max(len(r) for r in rows), max(r.max_new_tokens for r in requests)
        self.prompt_width, self.steps = t, s
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((b, t), self.pad, dtype=torch.long)
        mask = torch.ones((b, t + s), dtype=torch.long)  # generated positions are always attended
        for i, row in enumerate(rows):
            ids[i, t - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, : t - len(row)] = 0
        lengths = mask[:, :t].sum(dim=1)  # [B]
        self.input_ids = ids.to(dev)  # [B, T] left-padded
        self.mask = mask.to(dev)  # [B, T + S]
        self.prompt_pos = positions_from_mask(mask[:, :t]).to(dev)  # [B, T]
        # Position of the k-th generated token of every row; [S, B] so that row k is contiguous.
        self.gen_pos = (lengths[None, :] + torch.arange(s)[:, None]).to(dev)
        self.eos = torch.tensor(sorted(_eos_ids(lm)), dtype=torch.long, device=dev)
        self.limit = torch.tensor([r.max_new_tokens for r in requests], device=dev)  # [B]
        self.ignore_eos = torch.tensor([r.ignore_eos for r in requests], device=dev)  # [B]

        # Sampling: each row draws its uniforms up front from its own generator, so its tokens
        # depend only on its seed and logits, never on the other rows or the device.
        self.sampling = any(r.temperature > 0 for r in requests)
        self.greedy = torch.tensor([r.temperature == 0 for r in requests], device=dev)  # [B]
        self.temps = torch.tensor([r.temperature or 1.0 for r in requests], device=dev)  # [B]
        # top_p = 1 becomes inf so float rounding of the cumulative mass never drops a token.
        self.top_p = torch.tensor([r.top_p if r.top_p < 1 else math.inf for r in requests], device=dev)
        uniforms = torch.zeros((b, s))
        for i, r in enumerate(requests):
            if r.temperature > 0:
                gen = torch.Generator().manual_seed(r.seed)
                uniforms[i, : r.max_new_tokens] = torch.rand(r.max_new_tokens, generator=gen)
        self.uniforms = uniforms.to(dev)  # [B, S]

        # One hook per steered block; rows steered elsewhere (or not at all) get zero rows.
        self.deltas: dict[int, tuple[Tensor | None, Tensor | None]] = {}
        for block in sorted({r.block for r in requests if r.terms and r.block is not None}):
            phases = []
            for phase in ("prompt", "generated"):
                terms = [r.terms if r.block == block and r.where in ("all", phase) else () for r in requests]
                delta = stack_rows(terms, info.width).to(dev, dtype) if any(terms) else None
                phases.append(delta)  # [B, d] or None
            self.deltas[block] = (phases[0], phases[1])

        # Without it the prefill computes the LM head at every prompt position ([B, T, V]).
        self.keep = (
            {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        )
        self.active = torch.arange(b, device=dev)
        self.live = torch.ones(b, dtype=torch.bool, device=dev)  # not finished
        self.tokens = torch.full((b, s), self.pad, dtype=torch.long, device=dev)  # [B, S]
        self.count = torch.zeros(b, dtype=torch.long, device=dev)  # generated tokens, EOS excluded
        self.eos_hit = torch.zeros(b, dtype=torch.bool, device=dev)

    def pick(self, logits: Tensor, k: int) -> Tensor:
        """Next token of every row from the last-position logits [B, V]: [B]."""
        logits = logits.float()
        greedy = logits.argmax(dim=-1)
        if not self.sampling:
            return greedy
        probs = torch.softmax(logits / self.temps[:, None], dim=-1)
        # Sorting (stable) gives every row the same token order whatever the batch holds.
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        above = probs.cumsum(dim=-1) - probs  # [B, V] mass ranked above each token
        probs = probs.masked_fill(above >= self.top_p[:, None], 0.0)
        cdf = probs.cumsum(dim=-1)
        target = (self.uniforms[:, k] * cdf[:, -1])[:, None]
        # right=True never lands on a zero-probability token.
        rank = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
        return torch.where(self.greedy, greedy, order.gather(-1, rank)[:, 0])

    def advance(self, logits: Tensor, k: int) -> Tensor:
        """Choose step k's tokens [b] for the batch's rows and update which are still live."""
        rows, live = self.active, self.live
        nxt = torch.where(live, self.pick(logits, k), self.pad)
        hit = live & torch.isin(nxt, self.eos) & ~self.ignore_eos
        count = self.count[rows] + (live & ~hit)
        self.tokens[rows, k] = nxt
        self.count[rows] = count
        self.eos_hit[rows] = self.eos_hit[rows] | hit
        self.live = live & ~hit & (count < self.limit)
        return nxt

    def halt(self, requests: Collection[int]) -> None:
        """Finish these requests now (reason "stopped"); the other rows go on."""
        if requests:
            index = torch.tensor(sorted(requests), dtype=torch.long, device=self.active.device)
            self.live = self.live & ~torch.isin(self.active, index)

    def shrink(self, live: int) -> Tensor | None:
        """Drop finished rows once enough have finished to pay for copying the KV cache.

        Returns the indices of the rows kept, or None when the batch stays as it is.
        """
        size = int(self.live.shape[0])
        if size - live < max(1, size // 8):
            return None
        keep = self.live.nonzero()[:, 0]
        for name in self._ROWS:
            setattr(self, name, getattr(self, name)[keep])
        self.gen_pos = self.gen_pos[:, keep]
        return keep

    def results(self, tokenizer: Any) -> list[GenerationResult]:
        tokens, counts, eos = self.tokens.cpu(), self.count.tolist(), self.eos_hit.tolist()
        out = []
        for i, req in enumerate(self.requests):
            ids = tokens[i, : counts[i]].tolist()
            reason: FinishReason = (
                "eos" if eos[i] else "length" if counts[i] >= req.max_new_tokens else "stopped"
            )
            text = tokenizer.decode(ids, skip_special_tokens=True)
            out.append(GenerationResult(text, tuple(ids), len(ids), reason))
        return out


def _eos_ids(lm: LoadedModel) -> set[int]:
    ids = {lm.tokenizer.eos_token_id}
    configured = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {int(i) for i in ids if i is not None}


def _decode(lm: LoadedModel, batch: _Batch, stop: Stop) -> Generator[Tensor, None, None]:
    """Yield every step's tokens [b] (of the rows still in the batch; pad for finished ones) until
    all rows finish or stop is set.

    Hooks live exactly as long as this generator; close it to remove them early.
    """
    model, t = lm.model, batch.prompt_width
    with ExitStack() as stack:
        hooks: list[Adder] = []
        for block, (prompt, generated) in batch.deltas.items():
            hooks.append(stack.enter_context(adding(model, block, Adder(prompt, generated))))
        cache: Any = None
        nxt = batch.input_ids
        for k in range(batch.steps):
            if _stopped(stop):
                return
            # no_grad per step, not around the loop: grad mode must not leak to the consumer.
            with torch.no_grad():
                if k == 0:
                    kwargs = {"position_ids": batch.prompt_pos, **batch.keep}
                else:
                    kwargs = {"position_ids": batch.gen_pos[k - 1][:, None], "past_key_values": cache}
                out = model(input_ids=nxt, attention_mask=batch.mask[:, : t + k], use_cache=True, **kwargs)
                cache = out.past_key_values
                nxt = batch.advance(out.logits[:, -1], k)
            yield nxt
            live = int(batch.live.sum())
            if live == 0:
                return
            nxt = nxt[:, None]  # [b, 1] the next forward's input
            keep = batch.shrink(live) if hasattr(cache, "batch_select_indices") else None
            if keep is not None:
                cache.batch_select_indices(keep)
                for hook in hooks:
                    hook.select(keep)
                nxt = nxt[keep]


def generate(
    lm: LoadedModel, requests: Sequence[GenerationRequest], *, batch_size: int = 32, stop: Stop = None
) -> list[GenerationResult]:
    """Decode the requests in batches of `batch_size` rows; results come back in request order.

    A stop request finishes every unfinished row with finish_reason "stopped".
    """
    if batch_size < 1:
        raise EngineError(f"batch size must be at least 1, got {batch_size}")
    rows = [_encode(lm, r) for r in requests]  # every check runs before any decoding starts
    # Rows of similar length together: less padding to compute.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    results: list[GenerationResult | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = _Batch(lm, [requests[i] for i in chunk], [rows[i] for i in chunk])
        for _ in _decode(lm, batch, stop):
            pass
        for i, result in zip(chunk, batch.results(lm.tokenizer), strict=True):
            results[i] = result
    return [r for r in results if r is not None]
