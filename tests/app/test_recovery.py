"""Nothing finished is lost: a killed worker, a restarted server and a cancel all keep stored work."""

from __future__ import annotations

import os
import signal
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import Database
from app.main import create_app
from app.models import Job
from app.settings import Settings
from tests.app.conftest import wait_for, wait_job
from tests.app.helpers import max_abs_cos, vectors_of

# Reference mode trains one vector at a time, long enough per vector to be interrupted between them.
SLOW = {"prompts": ["Tell me a story."], "mode": "reference", "steps": 1200, "seed": 7}
# A bound for those runs (four vectors of 1200 whole-model steps, and a worker started again) that
# holds on a machine many times slower than a quiet one.
SLOW_JOB_S = 1200.0


def start(client: TestClient, **spec: Any) -> tuple[int, int]:
    r = client.post("/api/runs", json={**SLOW, **spec})
    assert r.status_code == 201, r.text
    return r.json()["run_id"], r.json()["job"]["id"]


def test_a_killed_worker_is_replaced_and_the_job_resumes(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        run_id, job_id = start(client, n_vectors=4)
        before = wait_for(lambda: vectors_of(client, run_id), SLOW_JOB_S, "a first stored vector")
        executor = client.app.state.service.executor
        pid = executor.pid
        os.kill(pid, signal.SIGKILL)
        job = wait_job(client, job_id, SLOW_JOB_S)
        assert job["status"] == "succeeded", job["error"]
        assert executor.pid != pid and job["attempts"] == 2
        after = vectors_of(client, run_id)
        assert [v["index"] for v in after] == [0, 1, 2, 3]  # exactly as many as asked, none twice
        for old in before:  # what the first worker stored is kept as it was
            assert after[old["index"]]["values"] == old["values"]
        assert max_abs_cos(after) < 1e-4


def test_a_restarted_server_picks_up_interrupted_and_queued_jobs(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        run_a, job_a = start(client, n_vectors=3)
        run_b, job_b = start(client, n_vectors=1, mode="fast", steps=5)
        wait_for(lambda: vectors_of(client, run_a), SLOW_JOB_S, "a first stored vector")
    database = Database(settings.resolved_database_url())
    with database.session() as session:
        statuses = dict(session.execute(select(Job.id, Job.status)).all())
    database.close()
    assert statuses == {job_a: "queued", job_b: "queued"}  # the stopping server queued its job again
    with TestClient(create_app(settings)) as client:
        for job_id in (job_a, job_b):
            job = wait_job(client, job_id, SLOW_JOB_S)
            assert job["status"] == "succeeded", job["error"]
        assert [v["index"] for v in vectors_of(client, run_a)] == [0, 1, 2]
        assert max_abs_cos(vectors_of(client, run_a)) < 1e-4
        assert len(vectors_of(client, run_b)) == 1


def test_cancel_keeps_finished_vectors(client: TestClient) -> None:
    run_id, job_id = start(client, n_vectors=4)
    wait_for(lambda: vectors_of(client, run_id), SLOW_JOB_S, "a first stored vector")
    r = client.post(f"/api/jobs/{job_id}/cancel")
    assert r.status_code == 200
    job = wait_job(client, job_id, SLOW_JOB_S)
    assert job["status"] == "cancelled"
    kept = vectors_of(client, run_id)
    assert 1 <= len(kept) < 4
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 409  # already finished
    retried = client.post(f"/api/jobs/{job_id}/retry")
    assert retried.json()["status"] == "queued"
    job = wait_job(client, job_id, SLOW_JOB_S)
    assert job["status"] == "succeeded", job["error"]
    assert [v["index"] for v in vectors_of(client, run_id)] == [0, 1, 2, 3]
