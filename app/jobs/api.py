"""The job queue over HTTP, and each job's event stream (SSE with Last-Event-ID replay)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from app import jobs, store
from app.deps import ServiceDep, SessionDep
from app.fields import Whole
from app.generations.sampling import sse
from app.models import Job
from app.responses import JobOut

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
KEEPALIVE_S = 15.0


@router.get("", summary="Jobs, newest first")
def list_jobs(
    session: SessionDep,
    status: jobs.Status | None = None,
    limit: Annotated[Whole, Query(ge=1, le=500)] = 50,
    offset: Whole = 0,
) -> list[JobOut]:
    query = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
    if status is not None:
        query = query.where(Job.status == status)
    return [JobOut.model_validate(j) for j in session.scalars(query).all()]


@router.get("/{job_id}")
def read_job(job_id: Whole, session: SessionDep) -> JobOut:
    return JobOut.model_validate(jobs.get(session, job_id))


@router.post(
    "/{job_id}/cancel", summary="Cancel; a running job stops between steps and keeps what it finished"
)
def cancel_job(job_id: Whole, service: ServiceDep) -> JobOut:
    return JobOut.model_validate(service.change_job(jobs.request_cancel, job_id))


@router.post(
    "/{job_id}/retry", summary="Queue a failed or cancelled job again; it resumes from what it stored"
)
def retry_job(job_id: Whole, service: ServiceDep) -> JobOut:
    return JobOut.model_validate(service.change_job(jobs.retry, job_id))


@router.get("/{job_id}/events", summary="Server-sent events of the job; reconnect with Last-Event-ID")
def job_events(
    job_id: Whole,
    request: Request,
    service: ServiceDep,
    last_event_id: Annotated[Whole, Header(alias="Last-Event-ID")] = 0,
) -> StreamingResponse:
    with service.db.session() as session:
        jobs.get(session, job_id)  # 404 before the stream starts

    def stored(after: int) -> tuple[list[tuple[int, str, dict[str, Any]]], str]:
        with service.db.session() as session:
            replay = [(e.id, e.type, e.data) for e in store.events_after(session, job_id, after)]
            return replay, jobs.get(session, job_id).status

    async def events() -> AsyncIterator[str]:
        # Subscribe before reading the table, so nothing falls between replay and live events.
        with service.broker.subscribe(f"job:{job_id}") as sub:
            seen = last_event_id
            replay, status = await asyncio.to_thread(stored, seen)  # the database, off the event loop
            for event_id, kind, data in replay:
                seen = event_id
                yield sse(kind, data, event_id)
            while status not in jobs.FINISHED and not await request.is_disconnected():
                live = await sub.next(KEEPALIVE_S)
                if live is None and sub.closed:
                    return  # the server is shutting down; a client reconnects with Last-Event-ID
                if live is None:
                    yield ": keep-alive\n\n"
                    continue
                if live["id"] <= seen:
                    continue
                seen = live["id"]
                data = {k: v for k, v in live.items() if k not in ("id", "type")}
                yield sse(live["type"], data, seen)
                if live["type"] == "finished" or (
                    live["type"] == "status" and data["status"] in jobs.FINISHED
                ):
                    return

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
