"""Chat in the worker: replies of several conversations decoded together, each row streamed.

A chat request carries rows (one per pane: the steered and the unsteered model), each a whole
conversation with its own steering and sampling. Requests that arrive together are decoded in one
batch; a stopped request halts its rows while the others go on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from app.executor.base import Event
from app.executor.codec import from_bytes
from engine import GenerationRequest, LoadedModel, stream_batch
from engine.generate import prompt_tokens


def request_rows(message: dict[str, Any]) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            messages=row["messages"],
            block=row.get("block"),
            terms=[(from_bytes(values), float(scale)) for values, scale in row.get("terms", [])],
            seed=int(row.get("seed", 0)),
            temperature=float(row.get("temperature", 0.0)),
            top_p=float(row.get("top_p", 1.0)),
            max_new_tokens=int(row.get("max_new_tokens", 128)),
        )
        for row in message["rows"]
    ]


def check(lm: LoadedModel, message: dict[str, Any]) -> dict[str, Any]:
    """Every check decoding would make, without decoding: prompt lengths per row."""
    return {"model": lm.info.to_dict(), "tokens": [prompt_tokens(lm, r) for r in request_rows(message)]}


def reply(
    lm: LoadedModel,
    messages: list[dict[str, Any]],
    send: Callable[[Event], None],
    stops: dict[str, threading.Event],
) -> None:
    """Decode all rows of these chat requests in one batch; one reply event per request."""
    requests, owner = [], []  # owner[i]: (position of the message, its row index) of batch row i
    for m, message in enumerate(messages):
        rows = request_rows(message)
        requests += rows
        owner += [(m, r) for r in range(len(rows))]
    ids = [str(message["id"]) for message in messages]

    def halted() -> set[int]:
        return {i for i, (m, _) in enumerate(owner) if stops[ids[m]].is_set()}

    steps = stream_batch(lm, requests, halted=halted)
    while True:
        try:
            pieces = next(steps)
        except StopIteration as end:
            results = end.value
            break
        # One event per step for every conversation in the batch: the pipe and the server's event
        # thread carry a message per step, not one per token.
        send(
            {
                "type": "chat_tokens",
                "items": [[ids[owner[row][0]], owner[row][1], text] for row, text in pieces],
            }
        )
    for m, rid in enumerate(ids):
        done = [results[i] for i, (mm, _) in enumerate(owner) if mm == m]
        value = {
            "model": lm.info.to_dict(),
            "rows": [
                {"text": x.text, "n_tokens": x.n_tokens, "finish_reason": x.finish_reason} for x in done
            ],
        }
        send({"type": "reply", "id": rid, "ok": True, "value": value})
