"""Nothing lost when the database is busy: another process holds SQLite's write lock for 35 s while a
run trains, and every vector and gallery sample the worker reported still ends up stored."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.main import create_app
from app.models import Generation, Vector
from app.settings import Settings
from tests.app.conftest import wait_for, wait_job

LOCK_S = 35  # longer than SQLite's busy timeout (10 s) and than the job lease (30 s)
HOLD = textwrap.dedent(
    """
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    db.execute("COMMIT")
    """
)


def test_an_exclusive_lock_during_a_run_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    prompts = ["Tell me a story.", "Name a colour."]
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/api/runs",
            json={"prompts": prompts, "n_vectors": 6, "mode": "reference", "steps": 150, "seed": 3},
        )
        assert r.status_code == 201, r.text
        run_id, job_id = r.json()["run_id"], r.json()["job"]["id"]
        wait_for(lambda: client.get(f"/api/jobs/{job_id}").json()["status"] == "running", what="the run")
        path = settings.resolved_database_url().removeprefix("sqlite:///")
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, path, str(LOCK_S)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            recorder = client.app.state.service.recorder
            # The worker goes on training; its results meet the lock and wait for it.
            wait_for(lambda: recorder.retries > 0, timeout=120, what="a write refused by the lock")
            assert holder.wait(timeout=LOCK_S + 60) == 0
        finally:
            holder.kill()
        job = wait_job(client, job_id, timeout=600)
        assert job["status"] == "succeeded", job
        with client.app.state.service.db.session() as session:
            indexes = sorted(session.scalars(select(Vector.index).where(Vector.run_id == run_id)))
            vector_ids = list(session.scalars(select(Vector.id).where(Vector.run_id == run_id)))
            samples = session.scalar(
                select(func.count()).select_from(Generation).where(Generation.vector_id.in_(vector_ids))
            )
            unsteered = session.scalar(
                select(func.count())
                .select_from(Generation)
                .where(Generation.vector_id.is_(None), Generation.prompt.in_(prompts))
            )
        print(f"writes tried again while the database was locked: {recorder.retries}")
        assert indexes == list(range(6))  # every vector, none twice
        assert samples == 6 * len(prompts) and unsteered == len(prompts)  # the whole gallery
        events = client.get(f"/api/jobs/{job_id}/events").text
        assert events.count("event: vectors") >= 1 and "event: finished" in events
