"""Cancel, claim, retry, finish, worker death and restart, raced in random orders on a real SQLite file.

Hypothesis drives the real dispatcher (`Service.dispatch_once`), the real cancel and retry behind
the API (`Service.change_job`), the real recorder applying worker events and a dead worker's report,
and the restart's `requeue_interrupted`, against a worker the test plays itself. A step may race two
or three of them in real threads (tests/app/interleave.py), switching between threads at every
statement a thread runs outside a transaction, in an order Hypothesis draws. A trigger on the jobs
table writes down every status a job takes, whoever writes it. After every step:

- no forbidden transition: every status change is a move of the state machine, the run's status is
  the job's, and no attempt of a job is handed to a worker twice;
- no lost cancel: a job whose cancel was answered "cancelled" (before it was claimed) never reaches
  the worker again and stays cancelled; one answered while it ran never starts another attempt and
  ends, once everything settles, finished;
- no results dropped: every event the worker sent for an attempt it ran (its start and its result)
  is stored, unless a restart abandoned that attempt.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, text

from app import jobs, store
from app.db import Database
from app.errors import Conflict
from app.executor.protocol import Finished, FromWorker, Order, Request, Result, Started, Stop, WorkerDied
from app.kinds import Kind
from app.models import Job, JobEvent, Run
from app.service import Service
from app.settings import Settings
from tests.app.interleave import Interleaver

MODEL = {"name": "m", "architecture": "llama", "n_blocks": 4, "width": 8, "context_length": 64}
MAX_JOBS = 4
AUDIT = (
    "CREATE TABLE status_log (job_id INTEGER, old TEXT, new TEXT)",
    """CREATE TRIGGER status_audit AFTER UPDATE OF status ON jobs
    BEGIN INSERT INTO status_log VALUES (old.id, old.status, new.status); END""",
)
INTERLEAVINGS: set[tuple[str, ...]] = set()  # every race run, with the switches it took
RACED = [0]  # races run
MIN_INTERLEAVINGS = 200
EXAMPLES, STEPS = 150, 30  # runs, and steps in each


class Worker:
    """The executor as the dispatcher and the recorder see it: orders and cancels are written down,
    and the test decides when the worker acts on them."""

    def __init__(self) -> None:
        self.order: Order | None = None
        self.started = False
        self.cancelled: set[tuple[int, int]] = set()  # (job, attempt) told to stop
        self.orders: list[tuple[int, int]] = []  # every (job, attempt) it was handed
        self.outbox: list[FromWorker] = []  # sent, not yet applied by the recorder
        self.sent: dict[tuple[int, int], list[str]] = {}  # what each attempt sent

    # the executor's interface

    def start(self, on_event: Callable[[FromWorker], None]) -> None:
        pass

    def close(self) -> None:
        pass

    def free_slots(self) -> int:
        return 0 if self.order else 1

    def submit(self, order: Order) -> None:
        assert self.order is None, "the dispatcher handed a busy worker a second job"
        self.order, self.started = order, False
        self.orders.append((order.job_id, order.attempt))

    def cancel(self, job_id: int) -> None:
        if self.order is not None and self.order.job_id == job_id:
            self.cancelled.add((job_id, self.order.attempt))

    def request(self, message: Request | Stop) -> None:
        pass

    # what the worker does

    def _send(self, event: FromWorker) -> None:
        self.outbox.append(event)
        if isinstance(event, Started | Result | Finished):
            self.sent.setdefault((event.job, event.attempt), []).append(event.name)

    def work(self) -> None:
        """Start the job it was given: report its start and a result."""
        assert self.order is not None
        job, attempt = self.order.job_id, self.order.attempt
        self._send(Started(job, attempt, model=MODEL))
        self._send(Result(job, attempt, result={f"a{attempt}": True}))
        self.started = True

    def finish(self) -> None:
        assert self.order is not None
        job, attempt = self.order.job_id, self.order.attempt
        status = "cancelled" if (job, attempt) in self.cancelled else "succeeded"
        self._send(Finished(job, attempt, status=status))
        self.order = None

    def die(self) -> None:
        assert self.order is not None
        self._send(WorkerDied(job=self.order.job_id))
        self.order = None


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database with the audit trigger, copied for each example."""
    path = tmp_path_factory.mktemp("races") / "template.db"
    database = Database(f"sqlite:///{path}")
    database.upgrade()
    with database.engine.begin() as conn:
        for statement in AUDIT:
            conn.exec_driver_sql(statement)
    database.close()
    return path


class JobRaces(RuleBasedStateMachine):
    folder: Path
    template: Path
    examples = 0

    @initialize()
    def setup(self) -> None:
        JobRaces.examples += 1
        data = self.folder / f"example-{JobRaces.examples}"
        data.mkdir()
        shutil.copy(self.template, data / "steerscope.db")
        self.settings = Settings(data_dir=data, auto_score=False, max_attempts=3, lease_s=3600)
        self.worker = Worker()
        self.service = Service(self.settings, executor=self.worker)  # type: ignore[arg-type]
        self.db = self.service.db
        self.jobs: list[int] = []
        # job -> (what the cancel answered, its attempts then); forgotten once a retry is accepted
        self.cancels: dict[int, tuple[str, int]] = {}
        self.abandoned: set[tuple[int, int]] = set()  # attempts a restart gave up on

    def teardown(self) -> None:
        if hasattr(self, "service"):
            self.settle()
            self.check_settled()
            self.db.close()

    # the actors (each one transaction or a few, as in the app)

    def dispatch(self) -> None:
        self.service.dispatch_once()

    def cancel(self, job_id: int) -> Job:
        return self.service.change_job(jobs.request_cancel, job_id)

    def retry(self, job_id: int) -> Job:
        return self.service.change_job(jobs.retry, job_id)

    def record(self) -> None:
        """The recorder applies the worker's oldest event not yet applied."""
        event = self.worker.outbox.pop(0)
        if isinstance(event, WorkerDied):
            self.service.recorder._worker_died(event)
        else:
            self.service.recorder._record(event)  # type: ignore[arg-type]

    # rules

    @precondition(lambda self: len(self.jobs) < MAX_JOBS)
    @rule()
    def add_job(self) -> None:
        with self.db.session() as session:
            model = store.upsert_model(session, MODEL)
            spec = {"prompts": ["hi"], "model": "m", "seed": 0}
            self.jobs.append(store.create_run(session, kind=Kind.CALIBRATE, spec=spec, model=model).id)

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def race(self, data: st.DataObject) -> None:
        """Two or three actors at once, in an interleaving Hypothesis draws: the dispatcher thread
        and the recorder's writer (one of each, as in the server), and requests (any number)."""
        threads = ["dispatch", "record"] if self.worker.outbox else ["dispatch"]
        own = data.draw(st.lists(st.sampled_from(threads), unique=True, max_size=2), label="threads")
        asks = data.draw(
            st.lists(
                st.sampled_from(["cancel", "cancel", "retry"]), min_size=max(0, 2 - len(own)), max_size=2
            ),
            label="requests",
        )
        picked = own + asks
        targets = [data.draw(st.sampled_from(self.jobs), label=f"{p} which") for p in picked]
        choices = data.draw(st.lists(st.integers(0, 2), max_size=24), label="switches")
        actions: list[Callable[[], Any]] = []
        for name, job_id in zip(picked, targets, strict=True):
            if name == "cancel":
                actions.append(lambda job_id=job_id: self.cancel(job_id))
            elif name == "retry":
                actions.append(lambda job_id=job_id: self.retry(job_id))
            else:
                actions.append(getattr(self, name))
        interleaver = Interleaver(self.db.engine, choices)
        outcomes = interleaver.run(actions)
        RACED[0] += 1
        INTERLEAVINGS.add(
            (*(f"{n}:{t}" for n, t in zip(picked, targets, strict=True)), str(interleaver.trace))
        )
        self.note(picked, targets, outcomes)

    def note(self, picked: list[str], targets: list[int], outcomes: list[tuple[bool, Any]]) -> None:
        """Keep what the cancels and retries answered; nothing else may fail."""
        retried = {t for p, t, (ok, _) in zip(picked, targets, outcomes, strict=True) if p == "retry" and ok}
        for name, job_id, (ok, value) in zip(picked, targets, outcomes, strict=True):
            if not ok and not (name in ("cancel", "retry") and isinstance(value, Conflict)):
                raise value
            if name == "cancel" and ok and job_id not in retried:
                self.cancels[job_id] = (value.status, value.attempts)
        for job_id in retried:
            self.cancels.pop(job_id, None)

    @precondition(lambda self: self.worker.order is not None)
    @rule(what=st.sampled_from(["work", "finish", "die"]))
    def worker_acts(self, what: str) -> None:
        """The worker starts the job it was given (its start and a result), finishes it (cancelled
        if it was told to stop), or dies."""
        if what == "die":
            self.worker.die()
            return
        if not self.worker.started:
            self.worker.work()
        if what == "finish":
            self.worker.finish()

    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        """The server is killed and starts again: the worker and what it had not yet reported are
        gone, and the jobs it ran are queued again (or cancelled), racing a cancel."""
        if self.worker.order is not None:
            self.abandoned.add((self.worker.order.job_id, self.worker.order.attempt))
        self.abandoned.update((e.job, e.attempt) for e in self.worker.outbox if not isinstance(e, WorkerDied))
        self.worker.order, self.worker.outbox = None, []

        def requeue() -> None:
            with self.db.session() as session:
                jobs.requeue_interrupted(session, owners=("server",), stale_before=jobs.EPOCH)

        if not self.jobs:
            requeue()
            return
        target = data.draw(st.sampled_from(self.jobs), label="cancel which")
        choices = data.draw(st.lists(st.integers(0, 1), max_size=16), label="switches")
        interleaver = Interleaver(self.db.engine, choices)
        outcomes = interleaver.run([requeue, lambda: self.cancel(target)])
        RACED[0] += 1
        INTERLEAVINGS.add(("restart", f"cancel:{target}", str(interleaver.trace)))
        self.note(["restart", "cancel"], [0, target], outcomes)

    # invariants

    def statuses(self) -> dict[int, tuple[str, int, str]]:
        with self.db.session() as session:
            rows = session.execute(
                select(Job.id, Job.status, Job.attempts, Run.status).join(Run, Job.run_id == Run.id)
            ).all()
        return {job_id: (status, attempts, run_status) for job_id, status, attempts, run_status in rows}

    @invariant()
    def no_forbidden_transition(self) -> None:
        if not hasattr(self, "db"):
            return
        with self.db.session() as session:
            moves = session.execute(text("SELECT job_id, old, new FROM status_log")).all()
        for job_id, old, new in moves:
            if old != new:
                assert new in jobs.TRANSITIONS[old], f"job {job_id} went from {old} to {new}"
        for job_id, (status, _, run_status) in self.statuses().items():
            assert status == run_status, f"job {job_id} is {status} but its run is {run_status}"
        assert len(set(self.worker.orders)) == len(self.worker.orders), "an attempt was handed out twice"
        for job_id in self.jobs:  # each claim is a new attempt: a job is never claimed twice at once
            attempts = [a for j, a in self.worker.orders if j == job_id]
            assert attempts == sorted(attempts), f"job {job_id} was handed out as attempts {attempts}"

    @invariant()
    def no_lost_cancel(self) -> None:
        if not hasattr(self, "db"):
            return
        now = self.statuses()
        for job_id, (answer, attempts) in self.cancels.items():
            status, attempts_now, _ = now[job_id]
            handed = [a for j, a in self.worker.orders if j == job_id and a > attempts]
            assert not handed, f"job {job_id} was cancelled ({answer}) and then ran again: attempts {handed}"
            assert attempts_now == attempts, f"job {job_id} was claimed again after its cancel"
            if answer == "cancelled":
                assert status == "cancelled", (
                    f"job {job_id} was cancelled before it started, and is {status} now"
                )
            else:
                assert status != "queued", f"job {job_id} was queued again after its cancel"

    @invariant()
    def no_results_dropped(self) -> None:
        if not hasattr(self, "db"):
            return
        applied = set(self.worker.sent)
        pending = {(e.job, e.attempt) for e in self.worker.outbox if not isinstance(e, WorkerDied)}
        with self.db.session() as session:
            started = {
                (job_id, int(data["attempt"]))
                for job_id, data in session.execute(
                    select(JobEvent.job_id, JobEvent.data).where(JobEvent.type == "started")
                )
            }
            results = {run.id: dict(run.result) for run in session.scalars(select(Run))}
            run_of = dict(session.execute(select(Job.id, Job.run_id)).all())
        for job_id, attempt in applied - pending - self.abandoned:
            what = self.worker.sent[(job_id, attempt)]
            if "started" in what:
                assert (job_id, attempt) in started, f"job {job_id} attempt {attempt}: its start was dropped"
            if "result" in what:
                assert f"a{attempt}" in results[run_of[job_id]], (
                    f"job {job_id} attempt {attempt}: result dropped"
                )

    # settling

    def settle(self) -> None:
        """Let everything run out: the worker finishes what it has, the recorder applies all."""
        for _ in range(100):
            while self.worker.outbox:
                self.record()
            if self.worker.order is not None:
                if not self.worker.started:
                    self.worker.work()
                self.worker.finish()
                continue
            self.dispatch()
            if self.worker.order is None and not self.worker.outbox:
                return
        raise AssertionError("the queue never settled")

    def check_settled(self) -> None:
        self.no_forbidden_transition()
        self.no_lost_cancel()
        self.no_results_dropped()
        for job_id, (status, _, _) in self.statuses().items():
            assert status in jobs.FINISHED, f"job {job_id} is still {status} once everything settled"


@pytest.fixture
def races(template: Path, tmp_path: Path) -> Iterator[type[JobRaces]]:
    JobRaces.template, JobRaces.folder = template, tmp_path
    yield JobRaces


def test_cancel_claim_retry_finish_and_death_race_safely(races: type[JobRaces]) -> None:
    run_state_machine_as_test(
        races,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            derandomize=True,  # the same runs every time: a failure is reproducible
            suppress_health_check=list(HealthCheck),
        ),
    )
    print(f"interleavings raced: {len(INTERLEAVINGS)} distinct, in {RACED[0]} races")
    assert len(INTERLEAVINGS) >= MIN_INTERLEAVINGS
