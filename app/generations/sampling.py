"""One generation on request (steered, with its unsteered partner), between training steps.

An identical request is answered from the generations table; only missing rows go to the worker.
What the worker generates is stored by the recorder's writer, like every result of the worker, so
a busy database delays the answer but does not lose it; the answer (and a stream's `done`) comes
only once it is stored, and a generation that could not be stored is answered as not kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from app import responses, schemas, store
from app.broker import Subscription
from app.errors import Invalid, Unavailable
from app.executor.protocol import Generate, Reply, Stop, Token
from app.service import Service

log = logging.getLogger(__name__)
SAMPLING = store.SAMPLING
KEEPALIVE_S = 10.0  # a comment this often while a stored generation waits for a busy database


@dataclass
class Plan:
    model: str
    rows: list[dict[str, Any]]  # steered first (if any), then unsteered; each with "key"
    found: dict[str, dict[str, Any]]  # key -> stored generation


def plan(service: Service, body: schemas.GenerationCreate) -> Plan:
    if not body.prompt.strip():
        raise Invalid("the prompt is empty")
    if body.max_new_tokens > service.settings.max_new_tokens or body.max_new_tokens < 1:
        raise Invalid(f"max new tokens must be between 1 and {service.settings.max_new_tokens}")
    sampling = {k: getattr(body, k) for k in SAMPLING}
    rows: list[dict[str, Any]] = []
    row: dict[str, Any]
    with service.db.session() as session:
        if body.vector_id is not None:
            vector = store.get_vector(session, body.vector_id)
            model = vector.run.model_name
            if body.model and body.model != model:
                raise Invalid(f"vector {vector.id} belongs to model {model!r}, not {body.model!r}")
            row = {"vector_id": vector.id, "scale": body.scale, "block": vector.block, "prompt": body.prompt}
            adapter = store.adapter_payload(vector) if vector.adapter is not None else None
            rows.append({**row, **sampling, "vector": vector.values, "adapter": adapter})
        else:
            model = body.model or service.settings.default_model
        rows.append(
            {
                "vector_id": None,
                "scale": 0.0,
                "block": None,
                "prompt": body.prompt,
                **sampling,
                "vector": None,
                "adapter": None,
            }
        )
        found: dict[str, dict[str, Any]] = {}
        for row in rows:
            row["key"] = store.generation_key(
                model, row["vector_id"], row["scale"], row["block"], row["prompt"], **sampling
            )
            hit = store.find_generation(session, row["key"])
            if hit is not None:
                found[row["key"]] = responses.generation_out(hit)
    return Plan(model, rows, found)


def _message(plan: Plan, missing: list[dict[str, Any]], stream: bool) -> Generate:
    return Generate(
        model=plan.model,
        stream=stream,
        rows=[{k: v for k, v in row.items() if k != "key"} for row in missing],
    )


def _store(service: Service, plan: Plan, missing: list[dict[str, Any]], value: dict[str, Any]) -> None:
    with service.db.session() as session:
        model = store.upsert_model(session, value["model"])
        # Unsteered first, so the steered row can link to its partner.
        pairs = sorted(
            zip(missing, value["rows"], strict=True), key=lambda rr: rr[0]["vector_id"] is not None
        )
        for row, result in pairs:
            fields = {k: v for k, v in row.items() if k not in ("key", "vector", "adapter")}
            stored = store.add_generation(session, model, {**fields, **result})
            plan.found[row["key"]] = responses.generation_out(stored)


def _keep(service: Service, plan: Plan, missing: list[dict[str, Any]], value: dict[str, Any]) -> Future[bool]:
    """Hand what the worker generated to the recorder's writer: stored after the writes queued
    before it, tried again while the database is busy (app/writer.py says what the future holds)."""

    def write() -> None:
        try:
            _store(service, plan, missing, value)
        except IntegrityError:
            # Two requests decoded the same generation at once (most often the unsteered partner they
            # share) and the other stored it first: store again, and the stored row is found.
            _store(service, plan, missing, value)

    return service.recorder.later(write)


def _answer(plan: Plan) -> dict[str, Any]:
    steered = [plan.found[r["key"]] for r in plan.rows if r["vector_id"] is not None]
    return {"generation": steered[0] if steered else None, "unsteered": plan.found[plan.rows[-1]["key"]]}


def _not_kept(failure: BaseException | None) -> str:
    if failure is None:
        return "the server is stopping: the generation was not stored; generate it again once it is back"
    return "the generation could not be stored (the health check at /api/health says why); it was not kept"


def save(
    service: Service, plan: Plan, missing: list[dict[str, Any]], value: dict[str, Any]
) -> dict[str, Any]:
    """Store what the worker generated (waiting while the database is busy); answer with the steered
    and unsteered rows, or raise `Unavailable` if it could not be kept."""
    if missing:
        done = _keep(service, plan, missing, value)
        if done.exception() is not None or not done.result():
            raise Unavailable(_not_kept(done.exception()))
    return _answer(plan)


def generate_now(service: Service, body: schemas.GenerationCreate) -> dict[str, Any]:
    p = plan(service, body)
    missing = [r for r in p.rows if r["key"] not in p.found]
    value = service.ask(_message(p, missing, False)) if missing else {"rows": []}
    return save(service, p, missing, value)


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


async def generate_stream(service: Service, p: Plan) -> AsyncIterator[str]:
    """SSE: `token` events with text pieces of the first missing row as decoded, then `done` with the
    stored rows once they are stored, or `error`: every stream ends with one of the two, and a
    `done` shows only what the database holds."""
    missing = [r for r in p.rows if r["key"] not in p.found]
    if not missing:
        yield sse("token", {"row": 0, "text": p.found[p.rows[0]["key"]]["text"]})
        yield sse("done", _answer(p))
        return
    message = _message(p, missing, True)
    finished = False
    with service.broker.subscribe(f"request:{message.id}") as sub:
        try:
            service.executor.request(message)
            while True:
                event = await sub.next(service.settings.request_timeout_s)
                if event is None:
                    detail = (
                        "the server is shutting down" if sub.closed else "the worker did not answer in time"
                    )
                    yield sse("error", {"detail": detail})
                    return
                if isinstance(event, Token):
                    yield sse("token", {"row": event.row, "text": event.text})
                elif isinstance(event, Reply) and not event.ok:
                    finished = True
                    yield sse("error", {"detail": event.error})
                    return
                elif isinstance(event, Reply):
                    finished = True
                    # Stored even if the client leaves now; the room in the writer's queue may take a while.
                    done = await asyncio.to_thread(_keep, service, p, missing, event.value)
                    async for piece in _stored(done, p, sub):
                        yield piece
                    return
        except Exception:
            log.exception("a streamed generation failed")
            yield sse("error", {"detail": "internal error"})
        finally:
            if not finished:  # the client went away: stop decoding for it
                service.executor.request(Stop(message.id))


async def _stored(done: Future[bool], p: Plan, sub: Subscription) -> AsyncIterator[str]:
    """Keep-alive comments while the writer stores a generation (a busy database makes it wait its
    turn), then `done` with the stored rows, or `error` if it was not kept (or the server is going
    down before it could say)."""
    waiting = asyncio.wrap_future(done)
    while not waiting.done():
        closing = asyncio.ensure_future(sub.next(KEEPALIVE_S))  # None: a while passed, or shutdown
        either: set[asyncio.Future[Any]] = {waiting, closing}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        if not waiting.done() and sub.closed:
            yield sse("error", {"detail": "the server is shutting down: the generation may not be kept"})
            return
        if not waiting.done():
            yield ": storing\n\n"
    if waiting.exception() is not None:
        yield sse("error", {"detail": _not_kept(waiting.exception())})
    elif not waiting.result():
        yield sse("error", {"detail": _not_kept(None)})
    else:
        yield sse("done", _answer(p))
