"""Writes what workers report into the database, then tells subscribers (SSE streams, waiters).

Every job event is stored as a JobEvent row first, so a stream that reconnects with
Last-Event-ID replays exactly what it missed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import jobs, store
from app.broker import Broker
from app.db import Database
from app.executor import Event
from app.models import Job, LanguageModel, Vector, now

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, db: Database, broker: Broker, *, max_attempts: int, wake: Callable[[], None]) -> None:
        self.db, self.broker, self.max_attempts, self.wake = db, broker, max_attempts, wake
        # Chat replies are followed by the chat hub (it stores them); it answers False for other ids.
        self.chat_events: Callable[[Event], bool] | None = None

    def __call__(self, event: Event) -> None:
        kind = event.get("type")
        if kind in ("reply", "token", "chat_tokens"):
            if self.chat_events is None or not self.chat_events(event):
                self.broker.publish(f"request:{event['id']}", event)
            return
        if kind == "ready":
            log.info("worker %s ready", event.get("pid"))
            self.wake()
            return
        if kind == "worker_died":
            self._worker_died(event)
            self.wake()
            return
        published: list[tuple[int, dict[str, Any]]] = []
        with self.db.session() as session:
            job = session.get(Job, int(event["job"]))
            if job is None or job.attempts != event.get("attempt") or job.status != "running":
                log.warning(
                    "dropping %s event of job %s attempt %s", kind, event.get("job"), event.get("attempt")
                )
                return
            job.heartbeat_at = now()
            data = getattr(self, f"_{kind}")(session, job, event)
            if data is not None:
                row = store.add_event(session, job.id, str(kind), data)
                published.append((row.id, {"type": kind, **data}))
        for event_id, data in published:
            self.broker.publish(f"job:{event['job']}", {"id": event_id, **data})
        self.broker.publish("jobs", {"job": event["job"], "type": kind})
        if kind == "finished":
            self.wake()

    def _started(self, session: Session, job: Job, event: Event) -> dict[str, Any]:
        model = store.upsert_model(session, event["model"])
        job.run.model_id = model.id
        job.message = "running"
        return {"status": "running", "attempt": job.attempts}

    def _progress(self, session: Session, job: Job, event: Event) -> dict[str, Any]:
        job.progress = float(event["progress"])
        if not job.cancel_requested:
            job.message = str(event["message"])
        return {"progress": job.progress, "message": job.message, "points": event.get("points", [])}

    def _vectors(self, session: Session, job: Job, event: Event) -> dict[str, Any]:
        run = job.run
        run.source, run.target = event.get("source", run.source), event.get("target", run.target)
        if event.get("radius") is not None:
            run.radius = float(event["radius"])
        extra = {k: event[k] for k in ("residual_norm",) if k in event}
        run.result = {**run.result, **extra, **event.get("result", {})}
        added = store.add_vectors(session, run, event["rows"])
        return {
            "vectors": [
                {"id": v.id, "index": v.index, "norm": v.norm, "objective": v.objective, "kl": v.kl}
                for v in added
            ]
        }

    def _generations(self, session: Session, job: Job, event: Event) -> dict[str, Any]:
        run = job.run
        model = session.get(LanguageModel, run.model_id)
        assert model is not None, "a job reports `started` (and its model) before anything else"
        ids = dict(session.execute(select(Vector.index, Vector.id).where(Vector.run_id == run.id)).all())
        stored = []
        for row in event["rows"]:
            if "vector_index" in row:
                index = row.pop("vector_index")
                row["vector_id"] = None if index is None else ids[index]
            stored.append(store.add_generation(session, model, row).id)
        return {"generations": stored}

    def _result(self, session: Session, job: Job, event: Event) -> dict[str, Any]:
        job.run.result = {**job.run.result, **event.get("result", {})}
        if event.get("radius") is not None:
            job.run.radius = float(event["radius"])
        return {"result": job.run.result}

    def _finished(self, session: Session, job: Job, event: Event) -> dict[str, Any]:
        status = event["status"]
        if status == "succeeded":
            job.progress = 1.0
        message = {"succeeded": "done", "cancelled": "cancelled; finished work kept", "failed": "failed"}[
            status
        ]
        jobs.transition(job, status, message=message, error=event.get("error", ""))
        return {"status": status, "error": job.error, "message": job.message}

    def _worker_died(self, event: Event) -> None:
        if event.get("job") is None:
            return
        with self.db.session() as session:
            job = session.get(Job, int(event["job"]))
            if job is None or job.status != "running":
                return
            if job.attempts >= self.max_attempts:
                jobs.transition(
                    job,
                    "failed",
                    message="failed",
                    error=f"the worker died {job.attempts} times running this job",
                )
                status = "failed"
            else:
                # Same owner: whoever ran it (server or CLI) runs it again once its new worker is up.
                jobs.transition(job, "queued", message="the worker died; resumes from what it stored")
                status = "queued"
            row = store.add_event(session, job.id, "status", {"status": status, "message": job.message})
            event_id, data = row.id, {"type": "status", **row.data}
        self.broker.publish(f"job:{event['job']}", {"id": event_id, **data})
