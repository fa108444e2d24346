"""The job queue's state machine: a closed set of statuses and the only legal moves between them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, get_args

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound
from app.models import Job, Run, now

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = get_args(Status)
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

# running -> queued: the worker died or the server restarted; the job resumes from what it stored.
# failed/cancelled -> queued: a retry, keeping whatever was finished.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "queued"}),
    "succeeded": frozenset(),
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
}


def transition(job: Job, to: Status, *, message: str = "", error: str = "") -> None:
    """Move `job` to status `to`, refusing any move the state machine does not allow."""
    if to not in TRANSITIONS.get(job.status, frozenset()):
        raise Conflict(f"job {job.id} is {job.status}; it cannot become {to}")
    job.status = to
    job.run.status = to
    stamp = now()
    if to == "running":
        job.started_at = job.started_at or stamp
        job.heartbeat_at = stamp
    if to in FINISHED:
        job.finished_at = job.run.finished_at = stamp
    if to == "queued":
        job.cancel_requested = False
        job.finished_at = job.run.finished_at = None
    if message:
        job.message = message
    job.error = error if to == "failed" else ""


def get(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def enqueue(session: Session, *, run: Run, priority: int = 0, owner: str = "") -> Job:
    job = Job(kind=run.kind, run=run, priority=priority, owner=owner, status="queued")
    run.status = "queued"
    session.add(job)
    session.flush()
    return job


def claim_next(session: Session, *, owner: str, any_owner: bool = True) -> Job | None:
    """Take the highest-priority queued job this owner may run and mark it running.

    A job with an owner is reserved for it; `any_owner` also takes the unreserved ones.
    """
    mine = or_(Job.owner == "", Job.owner == owner) if any_owner else Job.owner == owner
    job = session.scalars(
        select(Job).where(Job.status == "queued", mine).order_by(Job.priority.desc(), Job.id).limit(1)
    ).first()
    if job is None:
        return None
    transition(job, "running", message="starting")
    job.owner = owner
    job.attempts += 1
    return job


def request_cancel(session: Session, job_id: int) -> Job:
    """Cancel a queued job at once; ask a running one to stop (it keeps what it finished)."""
    job = get(session, job_id)
    if job.status == "queued":
        transition(job, "cancelled", message="cancelled before it started")
    elif job.status == "running":
        job.cancel_requested = True
        job.message = "cancelling"
    else:
        raise Conflict(f"job {job_id} is {job.status}; only queued or running jobs can be cancelled")
    return job


def retry(session: Session, job_id: int) -> Job:
    job = get(session, job_id)
    transition(job, "queued", message="queued again")
    job.owner = ""
    return job


def requeue_interrupted(session: Session, *, owners: tuple[str, ...], stale_before: datetime) -> list[Job]:
    """Running jobs whose runner is gone (those of `owners` and any whose heartbeat went stale) are
    queued again, or cancelled if a cancel was asked for; returns those queued."""
    jobs = session.scalars(
        select(Job).where(
            Job.status == "running", or_(Job.owner.in_(owners), Job.heartbeat_at < stale_before)
        )
    ).all()
    for job in jobs:
        if job.cancel_requested:  # the cancel outlives the runner: do not start the job again
            transition(job, "cancelled", message="cancelled; finished work kept")
            continue
        transition(job, "queued", message="interrupted; resumes from what it stored")
        job.owner = ""
    return [job for job in jobs if job.status == "queued"]


def beat(session: Session, job_ids: list[int]) -> None:
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(heartbeat_at=now()))


EPOCH = datetime(1970, 1, 1)  # a stale_before that no heartbeat is older than


def stale_cutoff(lease_s: float) -> datetime:
    return now() - timedelta(seconds=lease_s)
