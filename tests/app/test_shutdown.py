"""`steerscope serve` as a user runs it: SIGTERM ends open event streams at once and queues the running
job again, which resumes after a restart; a Ctrl-C stops server and worker without a word of alarm; a
server that cannot start says why in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from app.db import Database
from app.jobs.machine import FINISHED
from app.models import Job
from tests.app.conftest import wait_for
from tests.live import free_port

TIMEOUT = 60.0
EXIT_S = 10.0  # a bound on the wait for the process (it used to wait for every stream's client)


def environment(data: Path, tiny_dir: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "STEERSCOPE_DATA_DIR": str(data),
        "STEERSCOPE_DEFAULT_MODEL": str(tiny_dir),
        "STEERSCOPE_DEVICE": "cpu",
        "STEERSCOPE_WORKER_THREADS": "1",
        "STEERSCOPE_GALLERY_TOKENS": "4",
        "STEERSCOPE_HEARTBEAT_S": "0.2",
        "STEERSCOPE_PORT": str(port),
    }


# `steerscope serve` as a terminal starts it: SIGINT's default action restored first. A test
# runner's worker may ignore SIGINT, and an ignored signal stays ignored across exec.
AS_FROM_A_TERMINAL = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'app', 'serve'])"
)


@contextmanager
def serving(data: Path, tiny_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", AS_FROM_A_TERMINAL],
        env=environment(data, tiny_dir, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal gives a command
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/api/models", timeout=TIMEOUT).status_code == 200
        except httpx.TransportError:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            return False

    try:
        wait_for(up, timeout=120, what="the server to answer")
        yield process, url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def finished(url: str, job_id: int) -> dict[str, object] | None:
    """The job once it has ended, None while it runs."""
    job: dict[str, object] = httpx.get(f"{url}/api/jobs/{job_id}", timeout=TIMEOUT).json()
    return job if job["status"] in FINISHED else None


class Stream(threading.Thread):
    """Reads an SSE stream to its end, noting what it saw and whether the server ended it."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.text, self.opened, self.ended = url, "", threading.Event(), threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=httpx.Timeout(TIMEOUT, read=None)) as r:
                self.opened.set()
                for chunk in r.iter_text():
                    self.text += chunk
        except httpx.HTTPError:
            pass
        self.ended.set()


def test_sigterm_ends_streams_at_once_and_the_run_resumes_after_restart(
    tmp_path: Path, tiny_dir: Path
) -> None:
    data = tmp_path / "data"
    with serving(data, tiny_dir) as (process, url):
        body = {"prompts": ["Tell me a story."], "mode": "reference", "steps": 1200, "n_vectors": 2}
        r = httpx.post(f"{url}/api/runs", json=body, timeout=TIMEOUT)
        assert r.status_code == 201, r.text
        run_id, job_id = r.json()["run_id"], r.json()["job"]["id"]

        def vectors() -> list[dict[str, object]]:
            rows: list[dict[str, object]] = httpx.get(
                f"{url}/api/runs/{run_id}/vectors", params={"values": True}, timeout=TIMEOUT
            ).json()
            return rows

        first = wait_for(vectors, timeout=300, what="a first stored vector")
        # A chat reply long enough to be streaming when the signal comes (the tiny model's context
        # holds 256 tokens), and the job's own event stream.
        cid = httpx.post(f"{url}/api/conversations", json={}, timeout=TIMEOUT).json()["id"]
        settings = {"max_new_tokens": 220, "temperature": 0.0}  # greedy: no early end of text
        r = httpx.put(
            f"{url}/api/conversations/{cid}/steering",
            json={"terms": [], "settings": settings},
            timeout=TIMEOUT,
        )
        assert r.status_code == 200, r.text
        assert (
            httpx.post(
                f"{url}/api/conversations/{cid}/messages", json={"content": "Hello"}, timeout=TIMEOUT
            ).status_code
            == 202
        )
        chat, events = (
            Stream(f"{url}/api/conversations/{cid}/stream"),
            Stream(f"{url}/api/jobs/{job_id}/events"),
        )
        chat.start()
        events.start()
        wait_for(lambda: '"live": true' in chat.text and "event: vectors" in events.text, what="both streams")
        assert not chat.ended.is_set(), "the reply finished before the signal; the test needs it streaming"

        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=EXIT_S)
        took = time.monotonic() - sent
        assert chat.ended.wait(5) and events.ended.wait(5)  # the server ended them, not the client
        print(f"SIGTERM to exit: {took:.2f} s")

    database = Database(f"sqlite:///{data / 'steerscope.db'}")
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "queued"  # queued again, not left `running`
    database.close()

    with serving(data, tiny_dir) as (_, url):
        job = wait_for(lambda: finished(url, job_id), timeout=600, what="the resumed run")
        assert job["status"] == "succeeded", job
        after = httpx.get(f"{url}/api/runs/{run_id}/vectors", params={"values": True}, timeout=TIMEOUT).json()
        assert [v["index"] for v in after] == [0, 1]
        for old in first:  # what was stored before the signal is kept as it was
            assert after[int(str(old["index"]))]["values"] == old["values"]


def children(pid: int) -> set[int]:
    """The live child processes of `pid` (its worker, and multiprocessing's resource tracker)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited process nobody has reaped yet is gone for our purpose)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_ctrl_c_stops_the_server_and_its_worker_without_a_traceback_or_a_new_worker(
    tmp_path: Path, tiny_dir: Path
) -> None:
    with serving(tmp_path / "data", tiny_dir) as (process, url):
        # A finished job: the worker has loaded everything and waits in its loop.
        body = {"prompts": ["Hi."], "n_vectors": 1, "method": "random"}
        r = httpx.post(f"{url}/api/runs", json=body, timeout=TIMEOUT)
        assert r.status_code == 201, r.text
        job_id = r.json()["job"]["id"]

        job = wait_for(lambda: finished(url, job_id), timeout=300, what="a first job")
        assert job["status"] == "succeeded", job
        helpers = children(process.pid)
        assert helpers, "the server has no worker process"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole group
        assert process.wait(timeout=60) == 128 + signal.SIGINT  # the shell's status for a Ctrl-C
        log = process.stderr.read() if process.stderr else ""
        assert "Traceback" not in log and "starting a new one" not in log, log
        wait_for(lambda: not any(running(c) for c in helpers), 60, "the worker to exit")


def test_a_server_that_cannot_start_says_why_in_one_line(tmp_path: Path, tiny_dir: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "steerscope.db").write_bytes(b"this is not a database" * 100)
    for data, words in (
        (blocker / "data", "cannot write the data directory"),
        (broken, "cannot open the database"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "app", "serve"],
            env=environment(data, tiny_dir, free_port()),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in out.stderr, out.stderr
