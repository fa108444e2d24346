"""Reading a test server's results back."""

from __future__ import annotations

import json
from typing import Any

import torch
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.models import Base


def vectors_of(client: TestClient, run_id: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = client.get(f"/api/runs/{run_id}/vectors", params={"values": True}).json()
    return rows


def max_abs_cos(rows: list[dict[str, Any]]) -> float:
    unit = torch.nn.functional.normalize(
        torch.tensor([r["values"] for r in rows], dtype=torch.float64), dim=1
    )
    gram = unit @ unit.T - torch.eye(len(rows), dtype=torch.float64)
    return float(gram.abs().max())


def parse_sse(body: str) -> list[dict[str, Any]]:
    """Server-sent events as {id, event, data} dicts (comments skipped)."""
    events = []
    for block in body.strip().split("\n\n"):
        event: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            event[name] = json.loads(value) if name == "data" else value
        if event:
            events.append(event)
    return events


def row_counts(client: TestClient) -> dict[str, int]:
    """Rows in every table of the app: what a refused request must leave as it was."""
    with client.app.state.service.db.session() as session:
        return {
            table.name: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in Base.metadata.sorted_tables
        }


def score_run(service: Any, run_id: int, timeout: float = 600.0) -> dict[str, Any]:
    """Wait until the worker has scored a run (queued by itself once the run, and its twin if it has
    one, finished), then read back what it scored: the completions and the run's findings."""
    from app.discovery import findings
    from app.models import Job, Run
    from tests.app.conftest import wait_for

    def finished() -> str | None:
        with service.db.session() as session:
            status = session.scalars(
                select(Job.status)
                .join(Run, Job.run_id == Run.id)
                .where(Run.kind == "score", Run.inputs["for_run"].as_integer() == run_id)
                .order_by(Job.id.desc())
            ).first()
        return status if status in ("succeeded", "failed", "cancelled") else None

    assert wait_for(finished, timeout=timeout, what=f"the scoring of run {run_id}") == "succeeded"
    with service.db.session() as session:
        run = session.get(Run, run_id)
        assert run is not None
        return {"rows": findings.completions(session, run), "result": dict(run.result)}
