"""Interactive generations in the compute loop: chat replies and generation requests share one
continuous decode batch per model. A request joins at the next step, streams as it decodes, and
is answered when all its rows have finished; a stopped request leaves alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, cast
from weakref import WeakKeyDictionary

from app.executor.codec import adapter_from, from_bytes
from app.executor.protocol import Chat, ChatTokens, FromWorker, Generate, Reply, Token
from engine import Decoder, GenerationRequest, GenerationResult, LoadedModel
from engine.decode.decoder import Step
from engine.decode.generate import prompt_tokens
from engine.decode.prefixes import PrefixCache

log = logging.getLogger("steerscope.worker")
MAX_ROWS = 64  # rows decoded together per model (a chat has two: steered and unsteered)


def chat_rows(rows: list[dict[str, Any]]) -> list[GenerationRequest]:
    """A chat request's rows: one whole conversation per pane, each with its steering (vectors and at
    most one adapter, whose payload carries its scale) and sampling."""
    return [
        GenerationRequest(
            messages=row["messages"],
            block=row.get("block"),
            terms=[(from_bytes(values), float(scale)) for values, scale in row.get("terms", [])],
            adapter=adapter_from(row["adapter"]) if row.get("adapter") is not None else None,
            seed=int(row.get("seed", 0)),
            temperature=float(row.get("temperature", 0.0)),
            top_p=float(row.get("top_p", 1.0)),
            max_new_tokens=int(row.get("max_new_tokens", 128)),
        )
        for row in rows
    ]


def generate_rows(rows: list[dict[str, Any]]) -> list[GenerationRequest]:
    """A generation request's rows: a prompt with at most one vector (or adapter) at a scale."""
    return [
        GenerationRequest(
            prompt=row["prompt"],
            block=row.get("block"),
            terms=[(from_bytes(row["vector"]), float(row["scale"]))]
            if row.get("vector") is not None and row.get("adapter") is None
            else [],
            adapter=adapter_from(row["adapter"], float(row["scale"])) if row.get("adapter") else None,
            seed=int(row.get("seed", 0)),
            temperature=float(row.get("temperature", 0.0)),
            top_p=float(row.get("top_p", 1.0)),
            max_new_tokens=int(row.get("max_new_tokens", 64)),
        )
        for row in rows
    ]


def _split(key: Hashable) -> tuple[str, int]:
    """A decoder key: (request id, row)."""
    rid, row = cast(tuple[str, int], key)
    return rid, row


@dataclass
class _Request:
    rid: str
    chat: bool  # chat pieces go out as one event per step; a streamed generation's row 0 as tokens
    stream: bool
    model: str
    info: dict[str, Any]
    results: dict[int, GenerationResult] = field(default_factory=dict)
    rows: int = 0


class Generations:
    """The interactive decode batches, one per model, and the requests decoding in them."""

    def __init__(self, send: Callable[[FromWorker], None], prefix_bytes: int = 0) -> None:
        """`prefix_bytes`: the budget of each model's kept prompt prefixes (0: none are kept)."""
        self.send = send
        self.decoders: dict[str, Decoder] = {}
        # Per model, kept while the model is: a decoder ends with its last row, its prefixes stay.
        self.prefixes: WeakKeyDictionary[Any, PrefixCache] = WeakKeyDictionary()
        self.prefix_bytes = prefix_bytes
        self.requests: dict[str, _Request] = {}
        self.turn = 0  # models take turns when several have work

    def __bool__(self) -> bool:
        return any(self.decoders.values())

    def models(self) -> set[str]:
        """Models with rows decoding (they must stay loaded)."""
        return {name for name, decoder in self.decoders.items() if decoder}

    def admit(self, lm: LoadedModel, message: Chat | Generate) -> None:
        """Queue a chat or generation request; every row is checked first, so none or all join."""
        chat = isinstance(message, Chat)
        rows = chat_rows(message.rows) if chat else generate_rows(message.rows)
        for row in rows:
            prompt_tokens(lm, row)
        rid, model = message.id, message.model
        stream = isinstance(message, Generate) and message.stream
        request = _Request(rid, chat, stream, model, lm.info.to_dict(), rows=len(rows))
        self.requests[rid] = request
        if not rows:
            self._answer(request)
            return
        decoder = self.decoders.get(model)
        if decoder is None:
            decoder = self.decoders[model] = Decoder(lm, max_rows=MAX_ROWS, prefixes=self._prefixes(lm))
        for i, row in enumerate(rows):
            decoder.add((rid, i), row)

    def _prefixes(self, lm: LoadedModel) -> PrefixCache | None:
        if self.prefix_bytes <= 0:
            return None
        if lm.model not in self.prefixes:
            self.prefixes[lm.model] = PrefixCache(self.prefix_bytes)
        return self.prefixes[lm.model]

    def stop(self, rid: str) -> None:
        request = self.requests.get(rid)
        if request is not None:
            decoder = self.decoders[request.model]
            for i in range(request.rows):
                decoder.stop((rid, i))

    def step(self, preempt: Callable[[], bool] | None = None) -> None:
        """One decode step of one model's batch; pieces and finished requests go out as events.
        The step gives way if `preempt()` turns true during it (the decoder says when it may)."""
        busy = sorted(name for name, decoder in self.decoders.items() if decoder)
        if not busy:
            return
        self.turn = (self.turn + 1) % len(busy)
        name = busy[self.turn]
        step = self.decoders[name].step(preempt)
        if step.preempted:
            self.turn -= 1  # the same model goes again at the next step
            return
        self._emit(name, step)

    def first_tokens(self) -> None:
        """Prefill the requests waiting to join, every model's (their first tokens go out now)."""
        for name in sorted(name for name, decoder in self.decoders.items() if decoder.pending):
            self._emit(name, self.decoders[name].step(prefill_only=True))

    def _emit(self, name: str, step: Step) -> None:
        items = []
        for key, piece in step.pieces:
            rid, row = _split(key)
            request = self.requests[rid]
            if request.chat:
                items.append((rid, row, piece))
            elif request.stream and row == 0:
                self.send(Token(id=rid, row=0, text=piece))
        if items:
            # One event per step for every conversation: the pipe and the server's event thread
            # carry a message per step, not one per token.
            self.send(ChatTokens(items))
        for key, result in step.finished:
            rid, row = _split(key)
            request = self.requests[rid]
            request.results[row] = result
            if len(request.results) == request.rows:
                self._answer(request)
        if not self.decoders[name]:
            self._report(self.decoders.pop(name))  # its model may be evicted now

    @staticmethod
    def _report(decoder: Decoder) -> None:
        """When a batch drains: how much of the prompts came from kept prefixes so far."""
        if decoder.prefixes is not None:
            kept, stats = decoder.prefixes, decoder.prefixes.stats
            log.info(
                "prefix cache: %d of %d prompt tokens reused (%.0f%%), %d of %d rows hit, %.1f MiB kept",
                stats.reused_tokens,
                stats.prompt_tokens,
                100 * stats.token_share,
                stats.hits,
                stats.rows,
                kept.size / 2**20,
            )

    def _answer(self, request: _Request) -> None:
        del self.requests[request.rid]
        rows = [
            {"text": r.text, "n_tokens": r.n_tokens, "finish_reason": r.finish_reason}
            for _, r in sorted(request.results.items())
        ]
        self.send(Reply(id=request.rid, ok=True, value={"model": request.info, "rows": rows}))
