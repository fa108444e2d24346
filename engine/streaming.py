"""Streaming generation: text pieces as they are decoded, for one row or a batch of chat rows.

Gives the same text as `generate` for the same request and seed; rows can be stopped one by one
while the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Sequence
from typing import Any

from engine.generate import GenerationRequest, GenerationResult, Stop, _Batch, _decode, _encode
from engine.models import LoadedModel


class _Detokenizer:
    """Token ids to text pieces; holds back a tail that decodes to U+FFFD (a partial character)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""
        # Decode a short window, not everything: ids[start:read] is already-emitted context that
        # lets tokenizers which drop a leading space decode the new tokens the way they would in full.
        self.start = self.read = 0

    def _text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, token: int) -> str:
        self.ids.append(token)
        before, window = self._text(self.ids[self.start : self.read]), self._text(self.ids[self.start :])
        if len(window) <= len(before) or window.endswith("\ufffd"):
            return ""
        piece = window[len(before) :]
        self.start, self.read = self.read, len(self.ids)
        self.emitted += piece
        return piece

    def flush(self) -> str:
        """Whatever the full decode has beyond the pieces emitted (a held-back tail)."""
        full = self._text(self.ids)
        return full[len(self.emitted) :] if full.startswith(self.emitted) else ""


def stream(
    lm: LoadedModel, request: GenerationRequest, *, stop: Stop = None
) -> Generator[str, None, GenerationResult]:
    """Yield text pieces of one generation as they are decoded; the generator returns the result.

    Checks run now, before the first piece; same request and seed give the text `generate` gives.
    """
    batch = _Batch(lm, [request], [_encode(lm, request)])
    return _stream(lm, batch, stop)


def _stream(lm: LoadedModel, batch: _Batch, stop: Stop) -> Generator[str, None, GenerationResult]:
    detok = _Detokenizer(lm.tokenizer)
    steps = _decode(lm, batch, stop)
    try:
        for nxt in steps:
            if int(batch.count[0]) > len(detok.ids):  # a real token, not the EOS
                piece = detok.push(int(nxt[0]))
                if piece:
                    yield piece
    finally:
        steps.close()  # removes the hooks even when the consumer abandons the stream
    rest = detok.flush()
    if rest:
        yield rest
    return batch.results(lm.tokenizer)[0]


def stream_batch(
    lm: LoadedModel,
    requests: Sequence[GenerationRequest],
    *,
    halted: Callable[[], Collection[int]] | None = None,
) -> Generator[list[tuple[int, str]], None, list[GenerationResult]]:
    """Decode the requests together; after every step, yield the (request index, text piece) pairs
    it produced (a step may produce none: pieces wait for whole characters).

    `halted` is asked before every step for the indices of requests to stop now (a closed chat
    stream); those rows finish with reason "stopped" and the rest go on. Returns the results in
    request order.
    """
    batch = _Batch(lm, requests, [_encode(lm, r) for r in requests])
    detoks = [_Detokenizer(lm.tokenizer) for _ in requests]
    steps = _decode(lm, batch, None)
    try:
        while True:
            if halted is not None:
                batch.halt(halted())
            try:
                nxt = next(steps)
            except StopIteration:
                break
            counts = batch.count.tolist()
            pieces = []
            for row, token in zip(batch.active.tolist(), nxt.tolist(), strict=True):
                if counts[row] > len(detoks[row].ids):  # a real token, not the EOS or padding
                    piece = detoks[row].push(int(token))
                    if piece:
                        pieces.append((row, piece))
            if pieces:
                yield pieces
    finally:
        steps.close()
    rest = [(row, tail) for row, detok in enumerate(detoks) if (tail := detok.flush())]
    if rest:
        yield rest
    return batch.results(lm.tokenizer)
