"""How the events of a running job that carry no bookkeeping of the recorder's land on its job and
run rows: the worker's start, what it resolved, progress, generations, working scales and results.
The recorder (app/recorder.py) decides whether an event is stored at all, and in which transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import store
from app.executor.protocol import Generations, Progress, Resolved, Result, Started, WorkingScales
from app.models import Job, LanguageModel, Vector

PROGRESS_FIGURES = (  # the engine's figures a progress event may carry, stored beside its message
    "phase",
    "vectors_done",
    "vectors_total",
    "vectors_training",
    "step",
    "budget",
    "early_stops",
    "samples_done",
    "samples_total",
    "eta_s",
)


def started(session: Session, job: Job, event: Started) -> dict[str, Any]:
    model = store.upsert_model(session, event.model)
    job.run.model_id = model.id
    job.runner = event.runner
    job.message = "running"
    return {"status": "running", "attempt": job.attempts}


def resolved(job: Job, event: Resolved) -> dict[str, Any]:
    """Blocks and R on the run as soon as the worker knows them (the summary reads the run)."""
    run = job.run
    run.source = event.source if event.source is not None else run.source
    run.target = event.target if event.target is not None else run.target
    if event.radius is not None:
        run.radius = float(event.radius)
    if event.residual_norm is not None:
        run.result = {**run.result, "residual_norm": float(event.residual_norm)}
    return event.data()


def progress(job: Job, event: Progress) -> dict[str, Any]:
    job.progress = float(event.progress)
    if not job.cancel_requested:
        job.message = event.message
    # The engine's own figures (vectors done and in training, step of budget, ETA) ride along.
    figures = {k: event.figures[k] for k in PROGRESS_FIGURES if k in event.figures}
    return {"progress": job.progress, "message": job.message, "points": event.points, **figures}


def generations(session: Session, job: Job, event: Generations) -> dict[str, Any]:
    run = job.run
    model = session.get(LanguageModel, run.model_id)
    assert model is not None, "a job reports `started` (and its model) before anything else"
    ids = dict(session.execute(select(Vector.index, Vector.id).where(Vector.run_id == run.id)).all())
    stored = []
    for row in event.rows:
        row = dict(row)  # a refused write is tried again with the event as it came
        if "vector_index" in row:
            index = row.pop("vector_index")
            row["vector_id"] = None if index is None else ids[index]
        stored.append(store.add_generation(session, model, row).id)
    return {"generations": stored}


def working_scales(session: Session, job: Job, event: WorkingScales) -> dict[str, Any]:
    for row in event.rows:
        session.execute(
            update(Vector)
            .where(Vector.run_id == job.run.id, Vector.index == int(row["index"]))
            .values(working_scale=float(row["scale"]), broken_at=row.get("broken_at"))
        )
    return {"working_scales": [{"index": r["index"], "scale": r["scale"]} for r in event.rows]}


def result(job: Job, event: Result) -> dict[str, Any]:
    job.run.result = {**job.run.result, **event.result}
    if event.radius is not None:
        job.run.radius = float(event.radius)
    return {"result": job.run.result}
