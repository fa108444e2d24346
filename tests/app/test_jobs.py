"""The job state machine on a real SQLite file: legal moves happen, the others are refused."""

from __future__ import annotations

import ast
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import jobs, store
from app.db import Database
from app.errors import Conflict
from app.models import Job, now
from app.settings import ROOT

SPEC = {"prompts": ["hi"], "model": "m", "seed": 0}


def new_job(session: Session, *, priority: int = 0, owner: str = "") -> Job:
    model = store.upsert_model(session, {"name": "m", "architecture": "llama", "n_blocks": 4, "width": 8})
    return store.create_run(session, kind="melbo", spec=SPEC, model=model, priority=priority, owner=owner)


def test_a_job_runs_through_its_life(db: Database) -> None:
    with db.session() as session:
        job = new_job(session)
        assert (job.status, job.run.status) == ("queued", "queued")
        claimed = jobs.claim_next(session, owner="server")
        assert claimed is job and job.status == "running" and job.attempts == 1
        assert job.started_at is not None and job.heartbeat_at is not None
        jobs.transition(session, job, "succeeded")
        assert job.run.status == "succeeded" and job.finished_at is not None


@pytest.mark.parametrize(
    ("start", "illegal"),
    [
        ("queued", ["succeeded", "failed", "queued"]),
        ("running", ["running"]),
        ("succeeded", ["queued", "running", "failed", "cancelled"]),
        ("failed", ["running", "succeeded", "cancelled"]),
        ("cancelled", ["running", "succeeded", "failed"]),
    ],
)
def test_illegal_moves_are_refused(db: Database, start: str, illegal: list[str]) -> None:
    with db.session() as session:
        job = new_job(session)
        job.status = start
        for to in illegal:
            with pytest.raises(Conflict, match=f"is {start}; it cannot become {to}"):
                jobs.transition(session, job, to)  # type: ignore[arg-type]
            assert job.status == start


def test_claim_order_and_owners(db: Database) -> None:
    with db.session() as session:
        low = new_job(session)
        high = new_job(session, priority=5)
        reserved = new_job(session, priority=9, owner="cli:abc")
        assert jobs.claim_next(session, owner="server") is high  # a reserved job is not the server's
        assert jobs.claim_next(session, owner="server") is low
        assert jobs.claim_next(session, owner="server") is None
        assert jobs.claim_next(session, owner="cli:abc", any_owner=False) is reserved


def test_cancel_and_retry(db: Database) -> None:
    with db.session() as session:
        queued, running = new_job(session), new_job(session)
        jobs.claim_next(session, owner="server")  # takes `queued` (lower id)
        queued, running = running, queued
        assert jobs.request_cancel(session, queued.id).status == "cancelled"
        job = jobs.request_cancel(session, running.id)
        assert job.status == "running" and job.cancel_requested  # the worker stops it between steps
        jobs.transition(session, running, "cancelled")
        with pytest.raises(Conflict, match="only queued or running"):
            jobs.request_cancel(session, running.id)
        again = jobs.retry(session, running.id)
        assert again.status == "queued" and not again.cancel_requested and again.finished_at is None


def test_interrupted_jobs_are_queued_again(db: Database) -> None:
    with db.session() as session:
        orphan, stale, fresh = new_job(session), new_job(session), new_job(session)
        for owner in ("server", "cli:1", "cli:2"):  # claimed in id order: orphan, stale, fresh
            jobs.claim_next(session, owner=owner)
        stale.heartbeat_at = now() - timedelta(minutes=5)
        back = jobs.requeue_interrupted(session, owners=("server",), stale_before=jobs.stale_cutoff(30))
        assert {j.id for j in back} == {orphan.id, stale.id}
        assert fresh.status == "running"  # another process is still running it
        assert all(j.status == "queued" and j.owner == "" for j in back)


def test_a_cancel_asked_before_the_runner_vanished_is_kept(db: Database) -> None:
    with db.session() as session:
        job = new_job(session)
        jobs.claim_next(session, owner="server")
        jobs.request_cancel(session, job.id)  # asked; the server stopped before the worker obeyed
        back = jobs.requeue_interrupted(session, owners=("server",), stale_before=jobs.stale_cutoff(30))
        assert back == [] and job.status == "cancelled"
        assert jobs.claim_next(session, owner="server") is None  # it does not start again


def test_statuses_are_a_closed_set(db: Database) -> None:
    assert set(jobs.STATUSES) == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert set(jobs.TRANSITIONS) == set(jobs.STATUSES)
    with db.session() as session:
        new_job(session)
        assert session.scalars(select(Job.status)).all() == ["queued"]


def status_writes(source: str) -> list[int]:
    """Lines that write a status: `x.status = …` (or `+=`), or `status=` in an UPDATE's values."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AugAssign)
            else []
        )
        if any(isinstance(t, ast.Attribute) and t.attr == "status" for t in targets):
            lines.append(node.lineno)
        values = (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values"
        )
        if values and any(k.arg == "status" for k in node.keywords):
            lines.append(node.lineno)
    return lines


def test_only_the_state_machine_writes_a_status() -> None:
    """One place enforces the moves (app/jobs/machine.py); everyone else goes through it."""
    machine = ROOT / "app" / "jobs" / "machine.py"
    found = {
        str(path.relative_to(ROOT)): lines
        for path in sorted((ROOT / "app").rglob("*.py"))
        if path != machine and (lines := status_writes(path.read_text()))
    }
    assert found == {}
    assert status_writes(machine.read_text())  # the scan does see a status being written


def test_a_cancel_that_loses_the_race_to_the_claim_is_forwarded_not_lost(db: Database) -> None:
    """The cancel read the job queued; the dispatcher claimed it before the cancel wrote. The
    compare-and-set sees it and asks the running job to stop instead of overwriting its status."""
    with db.session() as session:
        job = new_job(session)
    with db.session() as cancel, db.session() as claim:
        assert jobs.get(cancel, job.id).status == "queued"  # the cancel's read
        assert jobs.claim_next(claim, owner="server") is not None
        claim.commit()
        answered = jobs.request_cancel(cancel, job.id)
        assert (answered.status, answered.cancel_requested, answered.attempts) == ("running", True, 1)
    with db.session() as session:
        assert jobs.claim_next(session, owner="server") is None


def test_a_retry_of_a_job_that_is_not_finished_is_refused(db: Database) -> None:
    with db.session() as session:
        job = new_job(session)
        with pytest.raises(Conflict, match="only failed or cancelled jobs can be retried"):
            jobs.retry(session, job.id)
        jobs.claim_next(session, owner="server")
        with pytest.raises(Conflict, match="only failed or cancelled jobs can be retried"):
            jobs.retry(session, job.id)
        assert jobs.get(session, job.id).status == "running"
