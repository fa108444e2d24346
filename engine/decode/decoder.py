"""Continuous batching: generation requests join a running decode batch and leave it one by one,
each row with its own steering, seed and sampling.

A step is one forward pass: either the prefill of the requests waiting to join (it gives their
first tokens; their KV cache is merged into the batch's at the start of the next step, so the
first tokens go out without waiting for the copy), or one more token for every row in the batch.
A row's text depends only on its own request: the same seed and settings give the same text
whether it decodes alone or beside others, joined early or late.

A decode step may be preempted: `step(preempt=...)` asks before every block whether other work is
waiting, and if so gives the step up (its cache writes undone) so that, say, a new reply's prefill
need not wait for a whole step of a large batch. The step after a preempted one always runs to
its end, so waiting work can delay the batch by at most one step at a time, never stall it.

    decoder = Decoder(lm)
    decoder.add("a", GenerationRequest(prompt="Hi", seed=1, temperature=0.8))
    while decoder:
        step = decoder.step()  # step.pieces: [(key, text)], step.finished: [(key, result)]
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Hashable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.decode import kvcache
from engine.decode.detokenizer import Detokenizer
from engine.decode.preempt import Preempted, preemptible
from engine.decode.request import FinishReason, GenerationRequest, GenerationResult, encode_request
from engine.errors import EngineError
from engine.methods.adapters import adapting, join_rows, stack_rows
from engine.models import LoadedModel
from engine.prompts import positions_from_mask
from engine.steer.steering import Adder, adding, combine

TRIM_COLUMNS = 16  # cut shared left padding once at least this many columns (and a quarter) are padding


@dataclass
class Step:
    pieces: list[tuple[Hashable, str]] = field(default_factory=list)  # text each row produced
    finished: list[tuple[Hashable, GenerationResult]] = field(default_factory=list)
    preempted: bool = False  # a decode step given up for waiting work: nothing decoded


class _Row:
    """One request's state: its prompt, what it generated, and whether it is done."""

    def __init__(self, key: Hashable, request: GenerationRequest, prompt: list[int], tokenizer: Any) -> None:
        self.key, self.request, self.prompt = key, request, prompt
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


@dataclass
class _Joining:
    """Rows just prefilled, with their own cache, waiting to be merged into the batch."""

    rows: list[_Row]
    cache: Any
    mask: Tensor
    deltas: dict[int, Tensor]
    adapters: dict[int, tuple[Tensor, Tensor]]
    tokens: list[int]


class Decoder:
    """A decode batch that requests join (`add`) and leave (`stop`, or when they finish)."""

    def __init__(self, lm: LoadedModel, *, max_rows: int = 64) -> None:
        if max_rows < 1:
            raise EngineError(f"a decoder needs room for at least one row, got {max_rows}")
        self.lm, self.max_rows = lm, max_rows
        param = next(lm.model.parameters())
        self.device, self.dtype = param.device, param.dtype
        tokenizer = lm.tokenizer
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos = _eos_ids(lm)
        params = inspect.signature(lm.model.forward).parameters
        # Without it the prefill computes the LM head at every prompt position ([B, T, V]).
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.pending: list[_Row] = []
        self.rows: list[_Row] = []  # the batch, in cache order (finished rows linger until compacted)
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # [B, L] 1 = real token
        self.last = torch.zeros(0, dtype=torch.long, device=self.device)  # [B] token fed next
        self.deltas: dict[int, Tensor] = {}  # block -> [B, d] added at generated positions
        self.adapters: dict[int, tuple[Tensor, Tensor]] = {}  # block -> per-row factors (adapters.py)
        self.joining: _Joining | None = None  # prefilled rows, merged into the batch at the next step
        self.prefilled_last = False
        self.preempted_last = False

    def __len__(self) -> int:
        """Requests not finished yet (waiting or decoding)."""
        return len(self.pending) + sum(not row.done for row in self._batch_rows())

    def _batch_rows(self) -> list[_Row]:
        """Rows in the batch, those prefilled but not merged yet included."""
        return self.rows + (self.joining.rows if self.joining is not None else [])

    def add(self, key: Hashable, request: GenerationRequest) -> None:
        """Queue a request; it joins the batch at a coming step. Every check runs now."""
        if any(row.key == key for row in (*self.pending, *self._batch_rows()) if not row.done):
            raise EngineError(f"a request with key {key!r} is already decoding")
        prompt = encode_request(self.lm, request)
        self.pending.append(_Row(key, request, prompt, self.lm.tokenizer))

    def stop(self, key: Hashable) -> None:
        """Finish this request at the next step (reason "stopped"); the others go on."""
        for row in (*self.pending, *self._batch_rows()):
            if row.key == key and not row.done:
                row.stopped = True

    def stop_all(self) -> None:
        for row in (*self.pending, *self._batch_rows()):
            row.stopped = True

    def step(self, preempt: Callable[[], bool] | None = None, *, prefill_only: bool = False) -> Step:
        """One forward pass (or none, when every request left); what it produced.

        The bookkeeping of the last step (merging prefilled rows, dropping finished ones) is done
        first, so that a step's tokens are out as soon as its forward pass ends. A decode step gives
        up (`Step.preempted`) if `preempt()` turns true before one of its blocks, unless the step
        before was preempted too. With `prefill_only`, the step prefills the requests waiting to
        join (their first tokens) even right after another prefill, and does nothing else."""
        out = Step()
        self._merge()
        self._compact()
        self._sweep_stopped(out)
        live = sum(not row.done for row in self.rows)
        can_join = self.cache is None or kvcache.reshapable(self.cache)
        # A prefill never follows a prefill while rows wait for their next token.
        settled = prefill_only or not (self.prefilled_last and live)
        if self.pending and live < self.max_rows and can_join and settled:
            self._prefill(self.pending[: self.max_rows - live], out)
            self.prefilled_last = True
        elif live and not prefill_only:
            self._decode(out, None if self.preempted_last else preempt)
            self.prefilled_last = False
            self.preempted_last = out.preempted
        if not len(self):
            self._merge()
            self._compact()  # nothing left to decode: free the cache now
        return out

    # the two kinds of step

    def _prefill(self, joining: list[_Row], out: Step) -> None:
        del self.pending[: len(joining)]
        width = max(len(row.prompt) for row in joining)
        ids = torch.full((len(joining), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(joining), width), dtype=torch.long)
        for i, row in enumerate(joining):
            ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt, dtype=torch.long)
            mask[i, width - len(row.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        prompt_deltas = self._deltas(joining, ("all", "prompt"))
        adapters = self._adapters(joining)
        with torch.no_grad(), self._steering(prompt_deltas, prompt=True), adapting(self.lm.model, adapters):
            result = self.lm.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions_from_mask(mask),
                use_cache=True,
                **self.keep_last,
            )
        tokens = self._pick(result.logits[:, -1], joining)
        for row, token in zip(joining, tokens, strict=True):
            self._advance(row, token, out)
        generated = self._deltas(joining, ("all", "generated"))
        from engine.decode.kvroom import with_room  # loads transformers, which the forward pass just used

        self.joining = _Joining(joining, with_room(result.cache), mask, generated, adapters, tokens)

    def _merge(self) -> None:
        """Append the rows prefilled last step to the batch: caches, masks, steering, adapters."""
        joining, self.joining = self.joining, None
        if joining is None:
            return
        last = torch.tensor(joining.tokens, dtype=torch.long, device=self.device)
        if self.cache is None:
            self.cache, self.mask, self.deltas = joining.cache, joining.mask, joining.deltas
            self.adapters, self.last, self.rows = joining.adapters, last, list(joining.rows)
            return
        n, width = len(joining.rows), joining.mask.shape[1]
        length = kvcache.join(self.cache, self.mask.shape[1], joining.cache, width)
        self.mask = torch.cat([_left_pad(self.mask, length), _left_pad(joining.mask, length)])
        for block in set(self.deltas) | set(joining.deltas):
            self.deltas[block] = torch.cat(
                [
                    self._or_zeros(self.deltas.get(block), len(self.rows)),
                    self._or_zeros(joining.deltas.get(block), n),
                ]
            )
        for block in set(self.adapters) | set(joining.adapters):
            self.adapters[block] = join_rows(
                self.adapters.get(block), len(self.rows), joining.adapters.get(block), n
            )
        self.last = torch.cat([self.last, last])
        self.rows += joining.rows

    def _decode(self, out: Step, preempt: Callable[[], bool] | None) -> None:
        batch = len(self.rows)
        mask = torch.cat([self.mask, self.mask.new_ones(batch, 1)], dim=1)
        positions = torch.tensor([[row.position] for row in self.rows], device=self.device)
        saved = kvcache.snapshot(self.cache)
        try:
            with (
                torch.no_grad(),
                self._steering(self.deltas, prompt=False),
                adapting(self.lm.model, self.adapters),
                preemptible(self.lm.model, preempt),
            ):
                result = self.lm.model(
                    input_ids=self.last[:, None],
                    attention_mask=mask,
                    position_ids=positions,
                    cache=self.cache,
                    use_cache=True,
                )
        except Preempted:
            kvcache.restore(self.cache, saved)
            out.preempted = True
            return
        self.cache, self.mask = result.cache, mask
        tokens = self._pick(result.logits[:, -1], self.rows)
        for row, token in zip(self.rows, tokens, strict=True):
            if not row.done:
                self._advance(row, token, out)
        self.last = torch.tensor(tokens, dtype=torch.long, device=self.device)

    # rows

    def _advance(self, row: _Row, token: int, out: Step) -> None:
        if token in self.eos and not row.request.ignore_eos:
            row.eos = True
        else:
            piece = row.detok.push(token)
            if piece:
                out.pieces.append((row.key, piece))
        if row.eos or len(row.tokens) >= row.request.max_new_tokens:
            self._finish(row, out)

    def _finish(self, row: _Row, out: Step) -> None:
        row.done = True
        tail = row.detok.flush()
        if tail:
            out.pieces.append((row.key, tail))
        ids = list(row.tokens)
        text = self.lm.tokenizer.decode(ids, skip_special_tokens=True)
        out.finished.append((row.key, GenerationResult(text, tuple(ids), len(ids), row.reason())))

    def _sweep_stopped(self, out: Step) -> None:
        """Finish stopped rows (after `_merge`: every prefilled row is in the batch by then)."""
        for row in [r for r in self.pending if r.stopped]:
            self.pending.remove(row)
            self._finish(row, out)
        for row in self.rows:
            if row.stopped and not row.done:
                self._finish(row, out)

    def _compact(self) -> None:
        """Drop finished rows once enough have finished to pay for copying the cache; cut padding."""
        if self.cache is None:
            return
        done = [i for i, row in enumerate(self.rows) if row.done]
        if len(done) == len(self.rows):
            self.rows, self.cache, self.deltas, self.adapters = [], None, {}, {}
            self.mask, self.last = self.mask[:0, :0], self.last[:0]
            return
        if len(done) >= max(1, len(self.rows) // 8):
            keep = torch.tensor([i for i, row in enumerate(self.rows) if not row.done], device=self.device)
            kvcache.select(self.cache, keep)
            self.rows = [self.rows[i] for i in keep.tolist()]
            self.mask, self.last = self.mask[keep], self.last[keep]
            self.deltas = {block: delta[keep] for block, delta in self.deltas.items()}
            self.adapters = {block: (a[keep], b[keep]) for block, (a, b) in self.adapters.items()}
        shared = int((self.mask.cumsum(dim=1) == 0).all(dim=0).sum())  # leading columns padded in every row
        if shared >= max(TRIM_COLUMNS, self.mask.shape[1] // 4):
            kvcache.trim(self.cache, self.mask.shape[1], shared)
            self.mask = self.mask[:, shared:]

    # steering and sampling

    def _deltas(self, rows: list[_Row], phases: tuple[str, ...]) -> dict[int, Tensor]:
        """Per block, the rows' summed steering [n, d] for these phases (zero rows where none)."""
        width = self.lm.info.width
        blocks = {row.request.block for row in rows if row.request.terms and row.request.where in phases}
        deltas = {}
        for block in sorted(b for b in blocks if b is not None):
            stacked = [
                combine(row.request.terms, width)
                if row.request.block == block and row.request.where in phases
                else torch.zeros(width)
                for row in rows
            ]
            deltas[block] = torch.stack(stacked).to(self.device, self.dtype)
        return deltas

    def _adapters(self, rows: list[_Row]) -> dict[int, tuple[Tensor, Tensor]]:
        """Per block, the rows' adapter factors (zero where a row has none)."""
        adapters = [row.request.adapter for row in rows]
        out = {}
        for block in sorted({a.block for a in adapters if a is not None}):
            factors = stack_rows(adapters, block)
            if factors is not None:
                out[block] = (factors[0].to(self.device, self.dtype), factors[1].to(self.device, self.dtype))
        return out

    def _or_zeros(self, delta: Tensor | None, rows: int) -> Tensor:
        if delta is not None:
            return delta
        return torch.zeros(rows, self.lm.info.width, device=self.device, dtype=self.dtype)

    @contextmanager
    def _steering(self, deltas: dict[int, Tensor], *, prompt: bool) -> Iterator[None]:
        """Hooks for exactly one forward pass: every row's delta at its block, removed afterwards."""
        with ExitStack() as stack:
            for block, delta in deltas.items():
                adder = Adder(delta, None) if prompt else Adder(None, delta, prompt_len=0)
                stack.enter_context(adding(self.lm.model, block, adder))
            yield

    def _pick(self, logits: Tensor, rows: list[_Row]) -> list[int]:
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


def _left_pad(mask: Tensor, width: int) -> Tensor:
    return torch.cat([mask.new_zeros(mask.shape[0], width - mask.shape[1]), mask], dim=1)


def _eos_ids(lm: LoadedModel) -> set[int]:
    ids = {lm.tokenizer.eos_token_id}
    configured = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {int(i) for i in ids if i is not None}
