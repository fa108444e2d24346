"""The health check: whether the server can write what it must (results, replies, generations)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.deps import ServiceDep

router = APIRouter(prefix="/api", tags=["health"])


class WriteFault(BaseModel):
    at: float = Field(description="When, in seconds since the epoch.")
    error: str


class HealthOut(BaseModel):
    ok: bool = Field(description="False (and the answer a 503) while any of the problems below stands.")
    database: str = Field(description='"ok", or why the database cannot be read.')
    pending_writes: int = Field(description="Results waiting for the writer (the database may be busy).")
    pending_limit: int = Field(description="Past this many, the worker is slowed down until there is room.")
    waiting_on_database_s: float | None = Field(
        description="How long the writer has been waiting for a busy database (None: it is not)."
    )
    retries: int = Field(description="Writes the database refused for a while and that were tried again.")
    faults: list[WriteFault] = Field(
        description="Writes the database refused for good (newest last): not retried, so not stored."
    )
    dispatcher: str = Field(description='"ok", or why its last pass failed.')


@router.get(
    "/health",
    summary="Whether results can be stored: the database, the writer's queue, writes that failed for good",
    responses={503: {"model": HealthOut, "description": "Something the server must write cannot be."}},
)
def health(service: ServiceDep, response: Response) -> HealthOut:
    database = "ok"
    try:
        with service.db.session() as session:
            session.execute(text("SELECT 1"))
    except OperationalError as exc:
        database = str(exc.orig)[:500]
    writer: dict[str, Any] = service.recorder.writer.health()
    ok = database == "ok" and not writer["faults"] and not service.dispatch_error
    if not ok:
        response.status_code = 503
    return HealthOut(
        ok=ok,
        database=database,
        pending_writes=writer["pending"],
        pending_limit=writer["limit"],
        waiting_on_database_s=writer["waiting_on_database_s"],
        retries=writer["retries"],
        faults=[WriteFault(**f) for f in writer["faults"]],
        dispatcher=service.dispatch_error or "ok",
    )
