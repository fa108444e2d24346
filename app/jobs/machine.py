"""The job queue's state machine: a closed set of statuses, the only legal moves between them, and the
one function that writes a job's status.

Every move is a compare-and-set, `UPDATE jobs SET status = :to … WHERE id = :id AND status =
:expected` (and the attempt, where the caller acts for one attempt), with its row count checked and
the run's mirrored status written in the same transaction. A status read earlier is never written
back unconditionally: SQLite runs reads outside any transaction, so between a read and a write
another thread or process may have moved the job (a cancel racing the dispatcher's claim). The loser
of such a race either makes the move that fits what it finds now (a cancel that missed a queued job
asks the running one to stop) or is told with `Lost`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, func, or_, select, update
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
RACES = 5  # reads and compare-and-sets a request makes before it gives up on a job that keeps moving


class Lost(Conflict):
    """The job was moved by someone else between reading it and writing it; nothing was written."""


def _move(
    session: Session,
    job_id: int,
    expected: str,
    to: Status,
    *,
    attempt: int | None = None,
    where: Iterable[ColumnElement[bool]] = (),
    values: dict[str, Any] | None = None,
) -> bool:
    """The one write of a job's status: a compare-and-set from `expected` (and `attempt`) to `to`,
    the run's status beside it; True if the row was as expected and moved."""
    if to not in TRANSITIONS.get(expected, frozenset()):
        raise Conflict(f"job {job_id} is {expected}; it cannot become {to}")
    stamp = now()
    job: dict[str, Any] = {"status": to, **(values or {})}
    run: dict[str, Any] = {"status": to}
    if to == "running":
        job.update(started_at=func.coalesce(Job.started_at, stamp), heartbeat_at=stamp)
    if to in FINISHED:
        job["finished_at"] = run["finished_at"] = stamp
    if to == "queued":
        job.update(cancel_requested=False, finished_at=None)
        run["finished_at"] = None
    if to != "failed":
        job["error"] = ""
    conditions = [Job.id == job_id, Job.status == expected, *where]
    if attempt is not None:
        conditions.append(Job.attempts == attempt)
    if expected == "running" and to == "queued":
        conditions.append(Job.cancel_requested.is_(False))  # a cancel outlives the attempt it was for
    session.flush()  # pending ORM changes first, so they cannot land after (and over) this write
    moved = session.execute(
        update(Job).where(*conditions).values(job).execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return False
    run_id = select(Job.run_id).where(Job.id == job_id).scalar_subquery()
    session.execute(
        update(Run).where(Run.id == run_id).values(run).execution_options(synchronize_session=False)
    )
    return True


def _reload(session: Session, job: Job) -> Job:
    """The job (and its run) as the database has them now, in this transaction."""
    session.refresh(job)
    session.refresh(job.run)
    return job


def transition(
    session: Session,
    job: Job,
    to: Status,
    *,
    attempt: int | None = None,
    message: str = "",
    error: str = "",
) -> None:
    """Move `job` from the status it was read in to `to` (for `attempt` only, if given); raises
    `Lost` if the row changed since, `Conflict` if the state machine has no such move."""
    expected = job.status
    values: dict[str, Any] = {"message": message} if message else {}
    if error and to == "failed":
        values["error"] = error
    moved = _move(session, job.id, expected, to, attempt=attempt, values=values)
    _reload(session, job)
    if not moved:
        raise Lost(f"job {job.id} was {expected} but is {job.status} now; it was not made {to}")


def get(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def enqueue(session: Session, *, run: Run, priority: int = 0, owner: str = "") -> Job:
    job = Job(kind=run.kind, run=run, priority=priority, owner=owner, status="queued")
    run.status = "queued"  # a new row: nobody else can see it before this transaction commits
    session.add(job)
    session.flush()
    return job


def claim_next(session: Session, *, owner: str, any_owner: bool = True) -> Job | None:
    """Take the highest-priority queued job this owner may run and mark it running.

    A job with an owner is reserved for it; `any_owner` also takes the unreserved ones. A job
    cancelled (or claimed by another process) between the read and the claim is passed over.
    """
    mine = or_(Job.owner == "", Job.owner == owner) if any_owner else Job.owner == owner
    while True:
        job_id = session.scalar(
            select(Job.id).where(Job.status == "queued", mine).order_by(Job.priority.desc(), Job.id).limit(1)
        )
        if job_id is None:
            return None
        values = {"owner": owner, "attempts": Job.attempts + 1, "message": "starting"}
        if _move(session, job_id, "queued", "running", values=values):
            return _reload(session, get(session, job_id))
        # Lost: the failed UPDATE opened this transaction, so the next read is already serialized.


def request_cancel(session: Session, job_id: int) -> Job:
    """Cancel a queued job at once (it never reaches a worker); ask a running one to stop (the
    dispatcher forwards the cancel to its worker; it keeps what it finished)."""
    for _ in range(RACES):
        job = get(session, job_id)
        if job.status == "queued":
            if _move(
                session, job_id, "queued", "cancelled", values={"message": "cancelled before it started"}
            ):
                return _reload(session, job)
        elif job.status == "running":
            asked = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running")
                .values(cancel_requested=True, message="cancelling")
                .execution_options(synchronize_session=False)
            )
            if asked.rowcount == 1:  # type: ignore[attr-defined]
                return _reload(session, job)
        else:
            raise Conflict(f"job {job_id} is {job.status}; only queued or running jobs can be cancelled")
    raise Lost(f"job {job_id} kept changing while it was being cancelled; try again")


def retry(session: Session, job_id: int) -> Job:
    """Queue a failed or cancelled job again; it resumes from what it stored."""
    job = get(session, job_id)
    if job.status not in ("failed", "cancelled"):  # running -> queued is for a runner that is gone
        raise Conflict(f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried")
    if not _move(session, job_id, job.status, "queued", values={"message": "queued again", "owner": ""}):
        _reload(session, job)
        raise Lost(f"job {job_id} changed while it was being retried (it is {job.status} now)")
    return _reload(session, job)


def interrupt(
    session: Session,
    job_id: int,
    *,
    message: str,
    attempt: int | None = None,
    max_attempts: int | None = None,
    failure: Callable[[int], str] = lambda attempts: "",
    release: bool = False,
    where: Iterable[ColumnElement[bool]] = (),
) -> Status | None:
    """A running job whose attempt ended without finishing it (its worker died, the server stopped,
    what it reported was not all stored): cancelled if a cancel was asked for (the cancel outlives
    the attempt), failed once `max_attempts` attempts were made (`failure(attempts)` says why),
    else queued again to resume from what it stored (`release`: by any owner).

    Only while the job is running (the attempt given, and `where` holds); its new status, or None
    if it is not running any more.
    """
    where = list(where)
    for _ in range(RACES):
        job = get(session, job_id)
        if job.status != "running" or (attempt is not None and job.attempts != attempt):
            return None
        to: Status
        values: dict[str, Any]
        if job.cancel_requested:
            to, values = "cancelled", {"message": "cancelled; finished work kept"}
        elif max_attempts is not None and job.attempts >= max_attempts:
            to, values = "failed", {"message": "failed", "error": failure(job.attempts)}
        else:
            to, values = "queued", {"message": message, **({"owner": ""} if release else {})}
        if _move(session, job_id, "running", to, attempt=job.attempts, where=where, values=values):
            _reload(session, job)
            return to
        # Lost: a cancel was asked meanwhile (or the job moved on); read it again.
    return None


def requeue_interrupted(session: Session, *, owners: tuple[str, ...], stale_before: datetime) -> list[Job]:
    """Running jobs whose runner is gone (those of `owners` and any whose heartbeat went stale) are
    queued again, or cancelled if a cancel was asked for; returns those queued."""
    gone = or_(Job.owner.in_(owners), Job.heartbeat_at < stale_before)
    ids = session.scalars(select(Job.id).where(Job.status == "running", gone)).all()
    back = []
    for job_id in ids:
        to = interrupt(
            session, job_id, message="interrupted; resumes from what it stored", release=True, where=[gone]
        )
        if to == "queued":
            back.append(get(session, job_id))
    return back


def hold(session: Session, job_id: int, attempt: int) -> Job | None:
    """Before storing what an attempt reported: mark its heartbeat, if the job is running that
    attempt, which also takes SQLite's write lock, so nobody can move the job until this
    transaction ends. The job, or None if it is not running that attempt."""
    held = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.attempts == attempt)
        .values(heartbeat_at=now())
        .execution_options(synchronize_session=False)
    )
    if held.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return get(session, job_id)


def beat(session: Session, job_ids: list[int]) -> None:
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == "running")
            .values(heartbeat_at=now())
            .execution_options(synchronize_session=False)
        )


EPOCH = datetime(1970, 1, 1)  # a stale_before that no heartbeat is older than


def stale_cutoff(lease_s: float) -> datetime:
    return now() - timedelta(seconds=lease_s)
