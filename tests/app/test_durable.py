"""Nothing lost when the database is busy: another process holds SQLite's write lock for 35 s while a
run trains, and every vector and gallery sample the worker reported still ends up stored; a streamed
generation or chat reply shows nothing that is not stored; reads answer while a write waits."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import BUSY_TIMEOUT_MS
from app.executor.protocol import FromWorker, Reply
from app.main import create_app
from app.models import Generation, Vector
from app.settings import Settings
from tests.app.conftest import make_settings, wait_for, wait_job
from tests.app.helpers import parse_sse
from tests.app.locks import ExclusiveLock
from tests.live import LiveServer, free_port

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


# A request while another process holds the lock: what a streamed generation or chat reply showed is
# stored (it waits for the lock, and its stream stays open), reads answer at once, and a form write
# waits for the lock alone. Real HTTP, so a stream cut short shows as an incomplete chunked read.

READ_S = 2.0  # a read answers within this while a write waits on the lock (it takes ms when idle)
BUSY_S = BUSY_TIMEOUT_MS / 1000  # how long SQLite makes one write wait before it says "locked"
HTTP_S = 300.0  # any one HTTP call, generously


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("locked") / "data", tiny_dir)
    with LiveServer(create_app(settings), free_port()) as server:
        yield server


def database_file(live: LiveServer) -> str:
    return str(live.app.state.service.settings.resolved_database_url().removeprefix("sqlite:///"))


def read_stream(http: httpx.Client, method: str, path: str, events: list[dict[str, Any]], **kw: Any) -> None:
    """Collect a server-sent events stream into `events` as it comes (run it in a thread)."""
    with http.stream(method, path, **kw) as response:
        assert response.status_code == 200, response.read()
        block: list[str] = []
        for line in response.iter_lines():
            if line:
                block.append(line)
                continue
            events.extend(parse_sse("\n".join(block)))
            block = []


def waited_for_the_lock(live: LiveServer, seconds: float) -> bool:
    """The writer has been waiting on the locked database for `seconds` past SQLite's own wait."""
    waiting = live.app.state.service.recorder.writer.health()["waiting_on_database_s"]
    return waiting is not None and waiting > seconds


def test_a_streamed_generation_outlasts_a_lock_and_shows_only_what_is_stored(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url, timeout=HTTP_S) as http:
        warm = http.post("/api/generations", json={"prompt": "Warm up.", "max_new_tokens": 2})
        assert warm.status_code == 200, warm.text  # the worker holds the model now
        events: list[dict[str, Any]] = []
        body = {"prompt": "Tell me about the sea.", "max_new_tokens": 12, "seed": 4, "stream": True}
        reader = threading.Thread(
            target=read_stream, args=(http, "POST", "/api/generations", events), kwargs={"json": body}
        )
        with ExclusiveLock(database_file(live)) as lock:
            reader.start()
            # Past SQLite's busy timeout and then some: where the stream used to be cut (at ~11 s).
            wait_for(
                lambda: waited_for_the_lock(live, 2.0), timeout=HTTP_S, what="the writer waiting on the lock"
            )
            assert reader.is_alive(), events  # the stream is still open …
            assert [e["event"] for e in events if e["event"] != "token"] == []  # … with no end yet
            assert any(e["event"] == "token" for e in events)  # and the tokens shown already
            lock.release()
            reader.join(HTTP_S)
        assert not reader.is_alive()
        shown = "".join(e["data"]["text"] for e in events if e["event"] == "token")
        assert events[-1]["event"] == "done", events[-1]
        answered = events[-1]["data"]["unsteered"]
        stored = {g["id"]: g["text"] for g in http.get("/api/generations", params={"limit": 1000}).json()}
        assert stored[answered["id"]] == answered["text"] == shown


def test_a_chat_reply_outlasts_a_lock_and_what_it_showed_is_stored(live: LiveServer) -> None:
    service = live.app.state.service
    with httpx.Client(base_url=live.url, timeout=HTTP_S) as http:
        conversation = http.post("/api/conversations", json={}).json()["id"]
        panel = {"terms": [], "settings": {"max_new_tokens": 12, "temperature": 0.0, "show_unsteered": False}}
        assert http.put(f"/api/conversations/{conversation}/steering", json=panel).status_code == 200
        with ExclusiveLock(database_file(live)) as lock:
            # The user's message is the request's own write: it waits for the lock, then is refused
            # with a 503, and nothing has started or been shown.
            refused = http.post(f"/api/conversations/{conversation}/messages", json={"content": "Hi."})
            assert refused.status_code == 503 and "busy" in refused.json()["detail"]
            lock.release()
        # Sent again: the reply streams, and its end meets the lock. (The tiny model answers in
        # milliseconds, so its reply waits at a gate on the executor's event thread until the lock
        # is held.)
        reached, gate, deliver = threading.Event(), threading.Event(), service.executor.on_event

        def gated(event: FromWorker) -> None:
            if isinstance(event, Reply) and live.app.state.chat.by_rid(event.id) is not None:
                reached.set()  # every token was delivered before it
                assert gate.wait(HTTP_S)
            deliver(event)

        service.executor.on_event = gated
        events: list[dict[str, Any]] = []
        try:
            r = http.post(f"/api/conversations/{conversation}/messages", json={"content": "Hi."})
            assert r.status_code == 202, r.text
            assert reached.wait(HTTP_S), "the reply did not end"
            stream = f"/api/conversations/{conversation}/stream"
            reader = threading.Thread(target=read_stream, args=(http, "GET", stream, events))
            reader.start()
            with ExclusiveLock(database_file(live)) as lock:
                gate.set()
                wait_for(lambda: waited_for_the_lock(live, 2.0), timeout=HTTP_S, what="the reply waiting")
                assert reader.is_alive() and not any(e["event"] == "done" for e in events), events
                lock.release()
                reader.join(HTTP_S)
        finally:
            gate.set()
            service.executor.on_event = deliver
        assert not reader.is_alive() and events[-1] == {"event": "done", "data": {"error": ""}}, events[-3:]
        shown = "".join(e["data"]["panes"].get("steered", "") for e in events if e["event"] != "done")
        messages = http.get(f"/api/conversations/{conversation}").json()["messages"]
        reply = [m for m in messages if m["role"] == "assistant"][-1]
        assert reply["finish_reason"] in ("length", "stop") and reply["content"] == shown != ""


def test_reads_answer_at_once_while_a_form_write_waits_on_the_lock(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url, timeout=HTTP_S) as http:
        write: dict[str, Any] = {}

        def post_label() -> None:
            start = time.monotonic()
            r = http.post(
                "/labels", data={"name": "during the lock", "colour": "#123456"}, follow_redirects=False
            )
            write.update(status=r.status_code, seconds=time.monotonic() - start)

        reads: list[float] = []
        with ExclusiveLock(database_file(live)) as lock:
            writer = threading.Thread(target=post_label)
            writer.start()
            while writer.is_alive():  # reads all the while the write waits (SQLite's busy timeout)
                for path in ("/api/jobs", "/labels", "/api/health"):
                    start = time.monotonic()
                    assert http.get(path).status_code == 200, path
                    reads.append(time.monotonic() - start)
            writer.join(HTTP_S)
            lock.release()
        slowest = max(reads)
        print(f"the form write waited {write['seconds']:.1f} s; {len(reads)} reads, slowest {slowest:.2f} s")
        assert write["status"] == 503 and write["seconds"] >= BUSY_S / 2  # it did wait on the lock
        assert len(reads) >= 10 and max(reads) < READ_S
        assert (
            http.post(
                "/labels", data={"name": "after the lock", "colour": "#123456"}, follow_redirects=False
            ).status_code
            == 303
        )
