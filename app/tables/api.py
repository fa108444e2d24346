"""Exports: vector metadata, generations and labels as CSV or JSONL (streamed), and vector values."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app import store
from app.deps import ServiceDep
from app.fields import Whole
from app.tables import exports

router = APIRouter(prefix="/api/export", tags=["export"])
MEDIA = {"csv": "text/csv", "jsonl": "application/x-ndjson"}


@router.get("/{table}.{fmt}", summary="A table as CSV or JSONL, optionally one run's rows only")
def export_table(
    table: Literal["vectors", "generations", "labels", "behaviours"],
    fmt: Literal["csv", "jsonl"],
    service: ServiceDep,
    run_id: Whole | None = None,
) -> StreamingResponse:
    if run_id is not None:
        with service.db.session() as session:
            store.get_run(session, run_id)  # 404 before the stream starts
    name = f"{table}{'' if run_id is None else f'-run-{run_id}'}.{fmt}"
    return StreamingResponse(
        exports.stream(service.db, table, fmt, run_id),
        media_type=MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
