from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db import Database
from app.main import create_app
from app.settings import Settings


def make_settings(data_dir: Path, model_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server: its own SQLite file, the tiny model, fast heartbeats."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "default_model": str(model_dir),
        "device": "cpu",
        "worker_threads": 1,
        "heartbeat_s": 0.2,
        "gallery_tokens": 6,
        "request_timeout_s": 180.0,  # how long the server waits on the worker: generous under load
        "allowed_hosts": "testserver",  # the name TestClient sends as Host
        # A scoring job queued behind every run would race the tests that count rows or want a quiet
        # worker; the behaviour tests turn it on.
        "auto_score": False,
        **overrides,
    }
    return Settings(**values)


# Upper bounds, not expectations: a 2-core machine shared with other work can be many times slower.
WAIT_S = 180.0


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT_S, what: str = "condition") -> Any:
    """Poll until `predicate` returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_job(client: TestClient, job_id: int, timeout: float = 2 * WAIT_S) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    result: dict[str, Any] = wait_for(finished, timeout, f"job {job_id} to finish")
    return result


@pytest.fixture
def settings(tmp_path: Path, tiny_dir: Path) -> Settings:
    return make_settings(tmp_path / "data", tiny_dir)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.resolved_database_url())
    database.upgrade()
    yield database
    database.close()


@pytest.fixture(scope="module")
def shared_settings(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Settings:
    return make_settings(tmp_path_factory.mktemp("server") / "data", tiny_dir)


@pytest.fixture(scope="module")
def client(shared_settings: Settings) -> Iterator[TestClient]:
    """A running server (real worker process, tiny model) shared by a module's tests."""
    with TestClient(create_app(shared_settings)) as test_client:
        yield test_client
