"""The recorder's end-of-job invariant: a job is `succeeded` only when everything it reported is
stored; otherwise it is queued again (or, out of attempts, failed) and says what is missing."""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import func, select

from app import jobs, store
from app.broker import Broker
from app.db import Database
from app.executor.protocol import Finished, Generations, JobEvent, Started, Vectors
from app.models import Job, Vector
from app.recorder import Recorder

MODEL = {"name": "tiny", "architecture": "llama", "n_blocks": 4, "width": 4, "context_length": 64}


def recorder(db: Database, max_attempts: int = 3) -> Recorder:
    return Recorder(db, Broker(), max_attempts=max_attempts, gallery_tokens=4, wake=lambda: None)


def running_job(db: Database, n_vectors: int = 2, kind: str = "melbo") -> tuple[int, int]:
    with db.session() as session:
        model = store.upsert_model(session, MODEL)
        spec = {"prompts": ["hi"], "n_vectors": n_vectors, "model": "tiny"}
        job = store.create_run(session, kind=kind, spec=spec, model=model)
        claimed = jobs.claim_next(session, owner="server")
        assert claimed is not None and claimed.id == job.id
        return job.id, job.attempts


def vector_row(index: int) -> dict[str, Any]:
    return {"index": index, "block": 1, "values": struct.pack("<4f", 1, 0, 0, index), "norm": 1.0}


def sample(index: int | None) -> dict[str, Any]:
    steered = index is not None
    return {
        "vector_index": index,
        "prompt": "hi",
        "scale": 1.0 if steered else 0.0,
        "block": 1 if steered else None,
        "seed": 0,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_new_tokens": 4,
        "text": "x",
        "n_tokens": 1,
        "finish_reason": "length",
    }


def feed(rec: Recorder, job_id: int, attempt: int, *events: Callable[[int, int], JobEvent]) -> None:
    """Hand events (made for this job and attempt) over as the executor does, and wait until the
    writer stored them."""
    rec.start()
    for event in events:
        rec(event(job_id, attempt))
    rec.stop(timeout=30)


def status(db: Database, job_id: int) -> tuple[str, str, str]:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status, job.message, job.error


def test_everything_stored_means_succeeded(db: Database) -> None:
    job_id, attempt = running_job(db)
    feed(
        recorder(db),
        job_id,
        attempt,
        partial(Started, model=MODEL),
        partial(Vectors, rows=[vector_row(0), vector_row(1)]),
        partial(Generations, rows=[sample(None), sample(0), sample(1)]),
        partial(Finished, status="succeeded"),
    )
    assert status(db, job_id)[0] == "succeeded"


def test_a_run_short_of_vectors_or_samples_runs_again(db: Database) -> None:
    job_id, attempt = running_job(db)
    feed(
        recorder(db),
        job_id,
        attempt,
        partial(Started, model=MODEL),
        partial(Vectors, rows=[vector_row(0)]),
        partial(Generations, rows=[sample(None), sample(0)]),
        partial(Finished, status="succeeded"),
    )
    state, message, _ = status(db, job_id)
    assert state == "queued" and message == "1 of 2 vectors are stored; running again to redo it"

    with db.session() as session:
        claimed = jobs.claim_next(session, owner="server")
        assert claimed is not None
        attempt = claimed.attempts
    feed(
        recorder(db),
        job_id,
        attempt,
        partial(Started, model=MODEL),
        partial(Vectors, rows=[vector_row(1)]),
        partial(Finished, status="succeeded"),  # vector 1's sample never came
    )
    state, message, _ = status(db, job_id)
    assert state == "queued" and message == "2 of 3 gallery samples are stored; running again to redo it"


def test_a_refinement_that_stored_no_vector_runs_again(db: Database) -> None:
    job_id, attempt = running_job(db, kind="rpath")
    feed(
        recorder(db),
        job_id,
        attempt,
        partial(Started, model=MODEL),
        partial(Generations, rows=[sample(None)]),  # its gallery's unsteered half, no vectors
        partial(Finished, status="succeeded"),
    )
    state, message, _ = status(db, job_id)
    assert state == "queued" and message == "its vectors are not stored; running again to redo it"


def test_an_event_that_cannot_be_stored_is_redone_never_dropped(db: Database) -> None:
    job_id, attempt = running_job(db, n_vectors=1)
    feed(
        recorder(db, max_attempts=1),
        job_id,
        attempt,
        partial(Started, model=MODEL),
        partial(Vectors, rows=[vector_row(0)]),
        partial(Generations, rows=[sample(None), sample(0), sample(7)]),  # 7: no such vector
        partial(Finished, status="succeeded"),
    )
    state, _, error = status(db, job_id)  # out of attempts: failed, saying why, not succeeded short
    assert (
        state == "failed"
        and error == "results were not all stored: a result the worker sent could not be stored"
    )
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Vector)) == 1


def test_a_steered_sample_stored_before_its_partner_is_linked_to_it(db: Database) -> None:
    """Rows of one decode batch finish in any order: the unsteered partner may come last."""
    job_id, attempt = running_job(db, n_vectors=2)
    started = partial(Started, model=MODEL)
    feed(
        recorder(db),
        job_id,
        attempt,
        started,
        partial(Vectors, rows=[vector_row(0), vector_row(1)]),
        partial(Generations, rows=[sample(0), sample(1)]),  # the steered rows first
        partial(Generations, rows=[sample(None)]),
    )
    with db.session() as session:
        from app.models import Generation

        rows = session.scalars(select(Generation)).all()
        unsteered = next(g for g in rows if g.vector_id is None)
        assert [g.unsteered_id for g in rows if g.vector_id is not None] == [unsteered.id, unsteered.id]
