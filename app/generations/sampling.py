"""One generation on request (steered, with its unsteered partner), between training steps.

An identical request is answered from the generations table; only missing rows go to the worker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from app import responses, schemas, store
from app.errors import Invalid
from app.executor.protocol import Generate, Reply, Stop, Token
from app.service import Service

SAMPLING = store.SAMPLING


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


def save(
    service: Service, plan: Plan, missing: list[dict[str, Any]], value: dict[str, Any]
) -> dict[str, Any]:
    """Store what the worker generated; answer with the steered and unsteered rows."""
    if missing:
        try:
            _store(service, plan, missing, value)
        except IntegrityError:
            # Two requests decoded the same generation at once (most often the unsteered partner they
            # share) and the other stored it first: store again, and the stored row is found.
            _store(service, plan, missing, value)
    steered = [plan.found[r["key"]] for r in plan.rows if r["vector_id"] is not None]
    return {"generation": steered[0] if steered else None, "unsteered": plan.found[plan.rows[-1]["key"]]}


def generate_now(service: Service, body: schemas.GenerationCreate) -> dict[str, Any]:
    p = plan(service, body)
    missing = [r for r in p.rows if r["key"] not in p.found]
    value = service.ask(_message(p, missing, False)) if missing else {"rows": []}
    return save(service, p, missing, value)


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


async def generate_stream(service: Service, p: Plan) -> AsyncIterator[str]:
    """SSE: `token` events with text pieces of the first missing row as decoded, then `done`."""
    missing = [r for r in p.rows if r["key"] not in p.found]
    if not missing:
        first = p.found[p.rows[0]["key"]]
        yield sse("token", {"row": 0, "text": first["text"]})
        yield sse("done", await asyncio.to_thread(save, service, p, [], {"rows": []}))
        return
    message = _message(p, missing, True)
    finished = False
    with service.broker.subscribe(f"request:{message.id}") as sub:
        service.executor.request(message)
        try:
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
                    yield sse("done", await asyncio.to_thread(save, service, p, missing, event.value))
                    return
        finally:
            if not finished:  # the client went away: stop decoding for it
                service.executor.request(Stop(message.id))
