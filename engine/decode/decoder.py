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
from collections.abc import Callable, Hashable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.decode import kvcache
from engine.decode.preempt import Preempted, preemptible
from engine.decode.prefixes import Layers, PrefixCache, prompt_steering, reply_reusable
from engine.decode.request import GenerationRequest, GenerationResult, encode_request
from engine.decode.rows import Row, pick
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


@dataclass
class _Joining:
    """Rows just prefilled, with their own cache, waiting to be merged into the batch."""

    rows: list[Row]
    cache: Any
    mask: Tensor
    deltas: dict[int, Tensor]
    adapters: dict[int, tuple[Tensor, Tensor]]
    tokens: list[int]


class Decoder:
    """A decode batch that requests join (`add`) and leave (`stop`, or when they finish)."""

    def __init__(self, lm: LoadedModel, *, max_rows: int = 64, prefixes: PrefixCache | None = None) -> None:
        """`prefixes`: prompt prefixes kept across requests (engine/decode/prefixes.py), shared by
        every decoder of this model; None prefills every prompt whole."""
        if max_rows < 1:
            raise EngineError(f"a decoder needs room for at least one row, got {max_rows}")
        self.lm, self.max_rows, self.prefixes = lm, max_rows, prefixes
        param = next(lm.model.parameters())
        self.device, self.dtype = param.device, param.dtype
        tokenizer = lm.tokenizer
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos = _eos_ids(lm)
        params = inspect.signature(lm.model.forward).parameters
        # Without it the prefill computes the LM head at every prompt position ([B, T, V]).
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.pending: list[Row] = []
        self.rows: list[Row] = []  # the batch, in cache order (finished rows linger until compacted)
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

    def _batch_rows(self) -> list[Row]:
        """Rows in the batch, those prefilled but not merged yet included."""
        return self.rows + (self.joining.rows if self.joining is not None else [])

    def add(self, key: Hashable, request: GenerationRequest) -> None:
        """Queue a request; it joins the batch at a coming step. Every check runs now."""
        if any(row.key == key for row in (*self.pending, *self._batch_rows()) if not row.done):
            raise EngineError(f"a request with key {key!r} is already decoding")
        prompt = encode_request(self.lm, request)
        row = Row(key, request, prompt, self.lm.tokenizer)
        if self.prefixes is not None:
            row.steering = prompt_steering(request)
        self.pending.append(row)

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

    def _prefill(self, joining: list[Row], out: Step) -> None:
        """Prefill the joining rows, each after the longest prefix of its prompt kept for its steering:
        past columns (kept prefixes, right-aligned) then the rest of each prompt (left-padded)."""
        del self.pending[: len(joining)]
        reused = [self._reused(row) for row in joining]
        past = max(n for n, _ in reused)
        width = max(len(row.prompt) - n for row, (n, _) in zip(joining, reused, strict=True))
        ids = torch.full((len(joining), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(joining), past + width), dtype=torch.long)
        for i, (row, (n, _)) in enumerate(zip(joining, reused, strict=True)):
            rest = row.prompt[n:]
            ids[i, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            mask[i, past - n : past] = 1
            mask[i, past + width - len(rest) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        prompt_deltas = self._deltas(joining, ("all", "prompt"))
        adapters = self._adapters(joining)
        from engine.decode import kvroom  # loads transformers, which the forward pass uses anyway

        cache = {"cache": kvroom.from_rows(reused, past, self.dtype, self.device)} if past else {}
        with torch.no_grad(), self._steering(prompt_deltas, prompt=True), adapting(self.lm.model, adapters):
            result = self.lm.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions_from_mask(mask)[:, past:],
                use_cache=True,
                **cache,
                **self.keep_last,
            )
        if self.prefixes is not None:
            if self.prefixes.usable is None:
                self.prefixes.usable = kvcache.plain(result.cache)
            for i, row in enumerate(joining):
                self._keep(row.steering, tuple(row.prompt), result.cache, mask, i)
        tokens = pick(result.logits[:, -1], joining)
        for row, token in zip(joining, tokens, strict=True):
            self._advance(row, token, out)
        generated = self._deltas(joining, ("all", "generated"))
        self.joining = _Joining(joining, kvroom.with_room(result.cache), mask, generated, adapters, tokens)

    def _reused(self, row: Row) -> tuple[int, Layers | None]:
        """The kept prefix this row starts from: its length and layers (0, None: none)."""
        if self.prefixes is None or not self.prefixes.usable:
            return 0, None
        return self.prefixes.longest(row.steering, tuple(row.prompt), len(row.prompt) - 1)

    def _keep(self, steering: bytes, ids: tuple[int, ...], cache: Any, mask: Tensor, i: int) -> None:
        """Keep row i's keys and values (the columns its mask marks), which hold exactly `ids`."""
        if self.prefixes is None or not self.prefixes.usable:
            return
        columns = mask[i].bool()

        def read() -> Layers:
            return [(layer.keys[i][:, columns], layer.values[i][:, columns]) for layer in cache.layers]

        self.prefixes.keep(steering, ids, read)

    def _keep_replies(self, rows: list[int]) -> None:
        """Keep the prompt and reply of batch rows that just finished, when a later prompt holding
        the reply would steer it as it was steered here."""
        for i in rows:
            row = self.rows[i]
            if reply_reusable(row.request):
                count = int(self.mask[i].sum())
                self._keep(row.steering, tuple((row.prompt + row.tokens)[:count]), self.cache, self.mask, i)

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
        tokens = pick(result.logits[:, -1], self.rows)
        ended: list[int] = []
        for i, (row, token) in enumerate(zip(self.rows, tokens, strict=True)):
            if not row.done:
                self._advance(row, token, out)
                if row.done:
                    ended.append(i)
        self._keep_replies(ended)
        self.last = torch.tensor(tokens, dtype=torch.long, device=self.device)

    # rows

    def _advance(self, row: Row, token: int, out: Step) -> None:
        if token in self.eos and not row.request.ignore_eos:
            row.eos = True
        else:
            piece = row.detok.push(token)
            if piece:
                out.pieces.append((row.key, piece))
        if row.eos or len(row.tokens) >= row.request.max_new_tokens:
            self._finish(row, out)

    def _finish(self, row: Row, out: Step) -> None:
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
        stopped = [i for i, row in enumerate(self.rows) if row.stopped and not row.done]
        self._keep_replies(stopped)
        for i in stopped:
            self._finish(self.rows[i], out)

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

    def _deltas(self, rows: list[Row], phases: tuple[str, ...]) -> dict[int, Tensor]:
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

    def _adapters(self, rows: list[Row]) -> dict[int, tuple[Tensor, Tensor]]:
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


def _left_pad(mask: Tensor, width: int) -> Tensor:
    return torch.cat([mask.new_zeros(mask.shape[0], width - mask.shape[1]), mask], dim=1)


def _eos_ids(lm: LoadedModel) -> set[int]:
    ids = {lm.tokenizer.eos_token_id}
    configured = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {int(i) for i in ids if i is not None}
