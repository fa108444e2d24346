"""Steered text generation for scripts: many requests decoded together, or one streamed.

Both go through the continuous-batching Decoder, so a request gives the same text here, in a
gallery and in a chat.
"""

from __future__ import annotations

from collections.abc import Generator, Hashable, Sequence

from engine.decode.decoder import Decoder
from engine.decode.request import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    Stop,
    encode_request,
    prompt_tokens,
    stopped,
)
from engine.errors import EngineError
from engine.models import LoadedModel

__all__ = ["FinishReason", "GenerationRequest", "GenerationResult", "generate", "prompt_tokens", "stream"]


def generate(
    lm: LoadedModel, requests: Sequence[GenerationRequest], *, batch_size: int = 32, stop: Stop = None
) -> list[GenerationResult]:
    """Decode the requests, up to `batch_size` rows at a time; results come back in request order.

    A stop request finishes every unfinished row with finish_reason "stopped".
    """
    if batch_size < 1:
        raise EngineError(f"batch size must be at least 1, got {batch_size}")
    lengths = [len(encode_request(lm, r)) for r in requests]  # every check runs before any decoding
    decoder = Decoder(lm, max_rows=batch_size)
    # Rows of similar length join together: less padding to compute.
    for i in sorted(range(len(requests)), key=lambda i: lengths[i]):
        decoder.add(i, requests[i])
    results: dict[Hashable, GenerationResult] = {}
    while decoder:
        if stopped(stop):
            decoder.stop_all()
        for key, result in decoder.step().finished:
            results[key] = result
    return [results[i] for i in range(len(requests))]


def stream(
    lm: LoadedModel, request: GenerationRequest, *, stop: Stop = None
) -> Generator[str, None, GenerationResult]:
    """Yield text pieces of one generation as they are decoded; the generator returns the result.

    Checks run now, before the first piece; same request and seed give the text `generate` gives.
    """
    decoder = Decoder(lm, max_rows=1)
    decoder.add(0, request)
    return _pieces(decoder, stop)


def _pieces(decoder: Decoder, stop: Stop) -> Generator[str, None, GenerationResult]:
    result: GenerationResult | None = None
    while decoder:
        if stopped(stop):
            decoder.stop_all()
        step = decoder.step()
        for _, piece in step.pieces:
            yield piece
        for _, finished in step.finished:
            result = finished
    assert result is not None, "a decoder reports every request it finishes"
    return result
