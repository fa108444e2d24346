"""No route touches the database on the event loop: every statement of every request runs in the
thread pool (or the writer's thread), so a database that makes one write wait holds up that request
alone, not every other request and stream. Each route that reads a form, streams, or waits on the
worker is called here, and a listener on the engine notes any statement run on the event loop."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save
from sqlalchemy import event

from tests.app.conftest import wait_job


def vector_file(seed: int) -> bytes:
    values = np.random.default_rng(seed).standard_normal((2, 64)).astype(np.float32)
    meta = {"format": "steerscope.vectors", "version": "1", "metadata": json.dumps({"prompts": ["Hi."]})}
    return save({"vectors": values}, metadata=meta)


class LoopWatch:
    """Counts the statements run, and notes those run on a thread with a running event loop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statements = 0
        self.on_loop: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            on_loop = False
        else:
            on_loop = True
        with self.lock:
            self.statements += 1
            if on_loop:
                self.on_loop.append(f"{self.request}: {statement[:80]}")

    request = ""


@pytest.fixture
def watch(client: TestClient) -> Iterator[LoopWatch]:
    seen = LoopWatch()
    engine = client.app.state.service.db.engine
    event.listen(engine, "before_cursor_execute", seen)
    yield seen
    event.remove(engine, "before_cursor_execute", seen)


def test_no_route_touches_the_database_on_the_event_loop(client: TestClient, watch: LoopWatch) -> None:
    def call(method: str, path: str, expect: tuple[int, ...] = (200,), **kw: Any) -> Any:
        watch.request = f"{method} {path}"
        r = client.request(method, path, follow_redirects=False, **kw)
        assert r.status_code in expect, (method, path, r.status_code, r.text[:300])
        return r

    files = {"file": ("a.safetensors", vector_file(1))}
    imported = call("POST", "/api/imports", (201,), files=files, data={"block": "1"}).json()
    run, (a, b) = imported["run_id"], imported["vector_ids"]
    for job in imported["sample_jobs"]:
        assert wait_job(client, job)["status"] == "succeeded"
        call("GET", f"/api/jobs/{job}/events")  # replays, then ends: the job is finished
    call("POST", "/import", (200,), files={"file": ("b.safetensors", vector_file(2))}, data={"block": "1"})
    call("POST", "/import", (409,), files={"file": ("b.safetensors", vector_file(2))}, data={"block": "1"})
    call("GET", f"/runs/{run}/live")
    call("GET", f"/api/vectors/{a}/export", params={"format": "json"})
    call("GET", f"/api/vectors/{a}/export", params={"format": "safetensors"})
    call("GET", f"/api/runs/{run}/export", params={"format": "safetensors"})

    call("POST", "/labels", (303,), data={"name": "loop", "colour": "#123456"})
    call("POST", "/labels", (422,), data={"name": "", "colour": "#123456"})
    call("POST", "/author", (303,), data={"name": "me", "next": "/labels"})
    call("POST", "/detectors", (303,), data={"name": "d", "kind": "regex", "pattern": "a"})
    call("POST", "/detectors", (422,), data={"name": "", "kind": "regex", "pattern": "("})
    detector = client.get("/api/detectors").json()[0]["id"]
    call("POST", f"/api/detectors/{detector}/runs/{run}")

    chat = call("POST", "/chat/new", (303,), data={"vector_id": str(a)}).headers["location"]
    conversation = int(chat.rsplit("/", 1)[1])
    panel = {"vector_id": str(a), "scale": "2", "enabled": str(a), "seed": "0", "max_new_tokens": "8"}
    call("POST", f"/chat/{conversation}/steering", data=panel)
    call("POST", f"/chat/{conversation}/add", data={"vector_id": str(b)})
    call("GET", f"/api/conversations/{conversation}/stream")  # no reply in progress: it ends

    call("POST", "/runs/new", (422,), data={"prompts": "", "n_vectors": "0"})
    call("POST", "/runs/preview", data={"prompts": "Hi.\nHello."})
    call("POST", "/runs/calibrate", data={"prompts": ""})
    call("POST", f"/vectors/{a}/scales")
    call("POST", f"/vectors/{a}/generate", data={"prompt": "Once", "scale": "2", "max_new_tokens": "4"})
    call("POST", f"/vectors/{a}/chain", (422,), data={"n_vectors": "0"})
    cell = {"vector_id": str(b), "prompt": "Once", "max_new_tokens": "4", "scale": "1"}
    call("POST", "/compare/cell", data=cell)
    call("POST", "/compare/downstream", data={"ids": f"{a},{b}", "prompt": "Once"})
    call("POST", f"/vectors/{a}/scale-sweep", (422,), data={"scales": "x"})
    call("POST", f"/vectors/{a}/rpath", (422,), data={"multiples": "x"})
    call("POST", f"/vectors/{a}/dashboard", (422,), data={"rank_by": "x"})
    call("GET", f"/vectors/{a}/dashboard")
    call("GET", f"/api/vectors/{a}/dashboard", (404,))
    call("POST", "/concepts", (422,), data={"positive": "one", "negative": "a\nb"})
    call("POST", f"/concepts/{run}/detect", (422,), data={"prompts": "x"})
    call("GET", "/concepts")
    call("POST", "/sweeps/new", (422,), data={"prompt_sets": "", "radii": "x"})
    call("POST", f"/runs/{run}/score", (204,))
    call("POST", f"/runs/{run}/compose", (422,), data={"n": "1"})
    call("POST", f"/runs/{run}/samples", (204, 409, 422))
    stream = {"prompt": "Twice", "max_new_tokens": 4, "stream": True}
    assert "event: done" in call("POST", "/api/generations", json=stream).text
    call("GET", "/api/health")

    assert watch.statements > 100  # the listener saw the requests' work
    assert watch.on_loop == []
