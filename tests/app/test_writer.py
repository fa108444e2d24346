"""The one writer's retry policy, its bounded queue, and a permanent error met by the recorder."""

from __future__ import annotations

import sqlite3
import threading
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.db import Database
from app.executor.protocol import Finished, Generations, Started, Vectors
from app.writer import Writer, refusal
from tests.app.test_recorder import MODEL, feed, recorder, running_job, sample, status, vector_row

BOUND_S = 60.0  # how long a thread may take to do what the test waits for


def real_error(path: Path, statement: str, *, locked: bool = False) -> OperationalError:
    """The OperationalError SQLAlchemy raises for `statement` (while another connection holds the
    write lock, if `locked`)."""
    holder = sqlite3.connect(path, isolation_level=None)
    if locked:
        holder.execute("BEGIN EXCLUSIVE")
    database = Database(f"sqlite:///{path}")
    try:
        with database.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA busy_timeout=0")
            conn.execute(text(statement))
    except OperationalError as exc:
        return exc
    finally:
        database.close()
        holder.close()
    raise AssertionError(f"{statement} did not fail")


def test_only_busy_and_locked_are_tried_until_they_land(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    sqlite3.connect(path).execute("CREATE TABLE t (a)").connection.close()
    assert refusal(real_error(path, "INSERT INTO t VALUES (1)", locked=True)) == "busy"
    assert refusal(real_error(path, "SELECT nothing FROM t")) == "permanent"  # no such column
    assert refusal(real_error(path, "INSERT INTO gone VALUES (1)")) == "permanent"  # no such table


def test_a_busy_write_is_retried_and_a_permanent_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    sqlite3.connect(path).execute("CREATE TABLE t (a)").connection.close()
    busy = real_error(path, "INSERT INTO t VALUES (1)", locked=True)
    permanent = real_error(path, "INSERT INTO gone VALUES (1)")
    tries: list[str] = []

    def flaky() -> None:
        tries.append("busy")
        if len(tries) < 3:
            raise busy

    def broken() -> None:
        tries.append("permanent")
        raise permanent

    writer = Writer()
    writer.start()
    try:
        assert writer.later(flaky).result(timeout=BOUND_S) is True
        failed = writer.later(broken)
        assert isinstance(failed.exception(timeout=BOUND_S), OperationalError)
        assert writer.later(lambda: None).result(timeout=BOUND_S) is True  # the writer goes on
    finally:
        writer.stop(timeout=5)
    assert tries == ["busy", "busy", "busy", "permanent"]  # tried once, not again and again
    assert writer.retries == 2
    assert [f.error for f in writer.faults] == [f"OperationalError: {permanent}"[:500]]


def test_a_full_queue_makes_the_caller_wait_and_drops_nothing() -> None:
    writer = Writer(limit=2)
    written: list[int] = []
    futures = [writer.later(partial(written.append, i)) for i in range(2)]
    third = threading.Thread(target=lambda: futures.append(writer.later(partial(written.append, 2))))
    third.start()
    third.join(timeout=0.5)
    assert third.is_alive(), "a third write was taken while the queue was full"
    writer.start()  # the queue drains, and the caller that waited gets its write in
    try:
        third.join(timeout=BOUND_S)
        assert not third.is_alive()
        assert [f.result(timeout=BOUND_S) for f in futures] == [True, True, True]
    finally:
        writer.stop(timeout=5)
    assert written == [0, 1, 2]


def test_a_write_handed_over_after_stop_is_answered_not_kept() -> None:
    writer = Writer()
    writer.start()
    writer.stop(timeout=5)
    assert writer.later(lambda: None).result(timeout=BOUND_S) is False


def test_an_event_the_database_refuses_for_good_fails_its_job_loudly(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    job_id, attempt = running_job(db, n_vectors=1)
    with db.session() as session:  # the schema no longer matches the code
        session.execute(text("ALTER TABLE generations RENAME TO generations_gone"))
    rec = recorder(db)
    feed(
        rec,
        job_id,
        attempt,
        partial(Started, model=MODEL),
        partial(Vectors, rows=[vector_row(0)]),
        partial(Generations, rows=[sample(None), sample(0)]),
        partial(Finished, status="succeeded"),
    )
    state, message, error = status(db, job_id)
    assert (state, message) == ("failed", "failed")
    assert error == "its results could not be stored: no such table: generations"
    assert rec.retries == 0  # not retried: it never lands
    assert "refuses the generations event of job" in caplog.text and "Traceback" in caplog.text
