"""Writes what workers report into the database, then tells subscribers (SSE streams, waiters).

The events go to the one writer (app/writer.py), which applies them in the order they came, each
in its own transaction, retried while the database is busy, so a busy database delays results but
never loses them; a later event waits its turn. An event's write refused for good (a schema the
code does not match) fails its job at once, loudly. An event that cannot be applied at all (a bug)
marks its job's attempt as incomplete, and a job is recorded `succeeded` only when everything it
reported is stored (app/runs/complete.py): otherwise it is queued again and redoes what is missing.

An event is stored only while its job is running the attempt that sent it, and the job's row is
held (app/jobs/machine.py `hold`) for the event's transaction, so no status change slips between
the check and the write.

Every job event is stored as a JobEvent row first, so a stream that reconnects with
Last-Event-ID replays exactly what it missed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app import jobs, kinds, store, stored_events
from app.broker import Broker
from app.db import Database
from app.discovery import detectors, findings
from app.executor.protocol import (
    ChatTokens,
    Detections,
    Findings,
    Finished,
    FromWorker,
    Generations,
    JobEvent,
    Progress,
    Ready,
    Reply,
    Resident,
    Resolved,
    Result,
    Started,
    SweepFound,
    Token,
    Vectors,
    WorkerDied,
    WorkingScales,
)
from app.models import Detector, Job, Run
from app.refine import scale_sweep
from app.runs import complete
from app.writer import Write, Writer

log = logging.getLogger(__name__)
Attempt = tuple[int, int]  # (job id, attempt)
Published = list[tuple[int, dict[str, Any]]]  # (stored event id, what subscribers get)


class Recorder:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        *,
        max_attempts: int,
        gallery_tokens: int,
        auto_score: bool = True,
        wake: Callable[[], None],
        cancel: Callable[[int], None] = lambda job_id: None,
        writer: Writer | None = None,
    ) -> None:
        self.db, self.broker, self.wake, self.cancel = db, broker, wake, cancel
        self.max_attempts, self.gallery_tokens = max_attempts, gallery_tokens
        self.auto_score = auto_score  # queue a learned run's scoring once it and its twin are done
        # Chat replies are followed by the chat hub (it stores them); it answers False for other ids.
        self.chat_events: Callable[[Reply | Token | ChatTokens], bool] | None = None
        self.writer = writer or Writer()
        self.reported: dict[Attempt, set[int]] = defaultdict(set)  # vector indexes each attempt sent
        self.incomplete: set[Attempt] = set()  # attempts with an event that could not be stored
        self.answered: set[Attempt] = set()  # scoring, judging, sweep attempts whose answer is stored

    # lifecycle

    def start(self) -> None:
        self.writer.start()

    def stop(self, timeout: float) -> None:
        """Write what is queued; a write the database still refuses after `timeout` s is left to
        the next start (whose job is queued again and redoes it)."""
        self.writer.stop(timeout)

    def later(self, write: Write) -> Future[bool]:
        """Run `write` on the writer thread, after everything queued before it, retried while the
        database is busy (see app/writer.py for what the future says)."""
        return self.writer.later(write)

    @property
    def retries(self) -> int:
        return self.writer.retries

    # events, as the executor hands them over (on its event thread)

    def __call__(self, event: FromWorker) -> None:
        match event:
            case Reply() | Token() | ChatTokens():
                ours = self.chat_events is not None and self.chat_events(event)
                if not ours and not isinstance(event, ChatTokens):
                    self.broker.publish(f"request:{event.id}", event)
            case Ready():
                log.info("worker %s ready", event.pid)
                self.wake()
            case Resident():
                pass
            case WorkerDied():
                self.later(lambda: self._worker_died(event))
                self.later(self.wake)  # once its job is queued again (or ended), dispatch
            case JobEvent():
                self.later(lambda: self._record(event))

    def _record(self, event: JobEvent) -> None:
        attempt: Attempt = (event.job, event.attempt)
        published: Published = []

        def write() -> None:
            nonlocal published
            published = self._apply(attempt, event)

        try:
            if not self.writer.durably(write):
                return  # stopping: the job is queued again at the next start and redoes it
        except jobs.Lost as exc:
            log.warning("the %s event of job %s was not applied: %s", event.name, event.job, exc)
        except OperationalError as exc:  # refused for good (busy was tried again): fail the job
            log.exception("the database refuses the %s event of job %s for good", event.name, event.job)
            self._fail(attempt, f"its results could not be stored: {exc.orig}")
            return
        except Exception:
            log.exception(
                "could not store the %s event of job %s; the job will redo it", event.name, event.job
            )
            self.incomplete.add(attempt)
        if isinstance(event, Finished) and self.auto_score:
            # Before the end is announced: a page following the run then finds its scoring queued.
            try:
                self.writer.durably(lambda: self._score_when_done(event.job))
            except OperationalError:
                log.exception("could not queue the scoring after job %s", event.job)
        for event_id, data in published:
            self.broker.publish(f"job:{event.job}", {"id": event_id, **data})
        self.broker.publish("jobs", {"job": event.job, "type": event.name})
        if isinstance(event, Finished):
            self.reported.pop(attempt, None)
            self.incomplete.discard(attempt)
            self.answered.discard(attempt)
            self.wake()

    def _fail(self, attempt: Attempt, error: str) -> None:
        """What the attempt reports cannot be stored at all: the job fails now, saying why, and its
        worker is told to stop (whatever it sends after is not stored)."""
        published: Published = []

        def write() -> None:
            nonlocal published
            with self.db.session() as session:
                job = jobs.hold(session, *attempt)
                if job is None:
                    return
                jobs.transition(session, job, "failed", attempt=attempt[1], message="failed", error=error)
                data = {"status": "failed", "error": job.error, "message": job.message}
                row = store.add_event(session, job.id, "finished", data)
                published = [(row.id, {"type": row.type, **data})]

        self.writer.durably(write)  # refused for good too: raised, and the health check shows it
        self.cancel(attempt[0])
        for event_id, data in published:
            self.broker.publish(f"job:{attempt[0]}", {"id": event_id, **data})
        self.wake()

    def _apply(self, attempt: Attempt, event: JobEvent) -> Published:
        """Store one event of a running job in one transaction; what to publish."""
        with self.db.session() as session:
            job = jobs.hold(session, *attempt)
            if job is None:  # the attempt ended (or was never claimed): nobody waits for this
                log.warning("dropping %s event of job %s attempt %s", event.name, *attempt)
                return []
            data = self._store(session, job, event)
            name = str(data.pop("type", event.name))  # a finished job may be queued again instead
            row = store.add_event(session, job.id, name, data)
            return [(row.id, {"type": row.type, **data})]

    def _store(self, session: Session, job: Job, event: JobEvent) -> dict[str, Any]:
        """Apply the event to the database; what is stored of it (and streamed) as the job's event."""
        match event:
            case Started():
                return stored_events.started(session, job, event)
            case Resolved():
                return stored_events.resolved(job, event)
            case Progress():
                return stored_events.progress(job, event)
            case Vectors():
                return self._vectors(session, job, event)
            case Generations():
                return stored_events.generations(session, job, event)
            case WorkingScales():
                return stored_events.working_scales(session, job, event)
            case Result():
                return stored_events.result(job, event)
            case Findings():
                return self._findings(session, job, event)
            case Detections():
                return self._detections(session, job, event)
            case SweepFound():
                return self._scale_sweep(session, job, event)
            case Finished():
                return self._finished(session, job, event)
        raise TypeError(f"no handler stores a {type(event).__name__} event")

    def _vectors(self, session: Session, job: Job, event: Vectors) -> dict[str, Any]:
        run = job.run
        run.source = event.source if event.source is not None else run.source
        run.target = event.target if event.target is not None else run.target
        if event.radius is not None:
            run.radius = float(event.radius)
        extra = {"residual_norm": event.residual_norm} if event.residual_norm is not None else {}
        run.result = {**run.result, **extra, **event.result}
        added = store.add_vectors(session, run, event.rows)
        self.reported[(job.id, job.attempts)].update(int(row["index"]) for row in event.rows)
        return {
            "vectors": [
                {"id": v.id, "index": v.index, "norm": v.norm, "objective": v.objective, "kl": v.kl}
                for v in added
            ]
        }

    def _findings(self, session: Session, job: Job, event: Findings) -> dict[str, Any]:
        run = session.get(Run, int(job.run.inputs["for_run"]))
        if run is None:
            raise LookupError(f"run {job.run.inputs['for_run']} is gone: its findings cannot be stored")
        found = event.found
        behaviours = findings.store(session, run, found)
        self.answered.add((job.id, job.attempts))
        return {
            "run_id": run.id,
            "scored": len(found["scores"]),
            "behaviours": sum(b.kind == "cluster" for b in behaviours),
        }

    def _detections(self, session: Session, job: Job, event: Detections) -> dict[str, Any]:
        detector = int(job.run.inputs["detector_id"])
        # A detector deleted while its judge ran has nowhere to keep the scores: nothing is owed.
        stored = (
            detectors.store_scores(session, detector, event.rows) if session.get(Detector, detector) else 0
        )
        self.answered.add((job.id, job.attempts))
        return {"run_id": int(job.run.inputs["for_run"]), "scored": stored}

    def _scale_sweep(self, session: Session, job: Job, event: SweepFound) -> dict[str, Any]:
        found = event.found
        stored = scale_sweep.record(session, job.run, found)
        self.answered.add((job.id, job.attempts))
        return {"completions": stored, "first_change": found["first_change"], "breaks": found["breaks"]}

    def _finished(self, session: Session, job: Job, event: Finished) -> dict[str, Any]:
        status = event.status
        if status == "succeeded":
            attempt = (job.id, job.attempts)
            missing = complete.missing(
                session,
                job,
                reported=self.reported.get(attempt, set()),
                lost=attempt in self.incomplete,
                answered=attempt in self.answered,
                gallery_tokens=self.gallery_tokens,
            )
            if missing:
                return self._redo(session, job, missing)
            job.progress = 1.0
        message = {"succeeded": "done", "cancelled": "cancelled; finished work kept", "failed": "failed"}[
            status
        ]
        jobs.transition(session, job, status, attempt=job.attempts, message=message, error=event.error)  # type: ignore[arg-type]
        return {"status": status, "error": job.error, "message": job.message}

    def _redo(self, session: Session, job: Job, missing: str) -> dict[str, Any]:
        """The worker finished but not all it reported is stored: run the job again for the rest
        (unless a cancel was asked for, or it is out of attempts)."""
        log.warning("job %s finished with %s; it runs again to redo it", job.id, missing)
        to = jobs.interrupt(
            session,
            job.id,
            attempt=job.attempts,
            message=f"{missing}; running again to redo it",
            max_attempts=self.max_attempts,
            failure=lambda _: f"results were not all stored: {missing}",
        )
        if to is None:
            raise jobs.Lost(f"job {job.id} is not running attempt {job.attempts} any more")
        if to == "queued":
            self.wake()
            return {"type": "status", "status": "queued", "message": job.message}
        return {"type": "finished", "status": to, "error": job.error, "message": job.message}

    def _score_when_done(self, job_id: int) -> None:
        """A learned run (with its twin) is done: queue its scoring. Its own transaction, after the
        job's end is stored, so a fault here never keeps a finished job from being recorded."""
        try:
            with self.db.session() as session:
                job = session.get(Job, job_id)
                if job is None or job.status not in jobs.FINISHED or kinds.of(job.run.kind).answered:
                    return
                queued = findings.score_when_done(session, job.run)
        except OperationalError:
            raise  # busy: tried again
        except Exception:
            log.exception("could not queue the scoring after job %s", job_id)
            return
        if queued is not None:
            self.wake()

    def _worker_died(self, event: WorkerDied) -> None:
        if event.job is None:
            return
        with self.db.session() as session:
            # Same owner: whoever ran it (server or CLI) runs it again once its new worker is up.
            status = jobs.interrupt(
                session,
                event.job,
                message="the worker died; resumes from what it stored",
                max_attempts=self.max_attempts,
                failure=lambda attempts: f"the worker died {attempts} times running this job",
            )
            if status is None:
                return
            job = jobs.get(session, event.job)
            row = store.add_event(session, job.id, "status", {"status": status, "message": job.message})
            event_id, data = row.id, {"type": "status", **row.data}
        self.broker.publish(f"job:{event.job}", {"id": event_id, **data})
