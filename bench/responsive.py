"""Does the web process stay responsive while a run trains? Idle against training, in one run.

Starts `steerscope serve` on the embedded model with a fresh database, then measures, first idle
and then while a MELBO run trains: the latency of the home page and of an API call, and the time
to the first streamed token of a single generation request. Then, still training, it counts the
run's optimizer steps per second alone and while 4 chat replies stream. The step counter follows
the run's event stream from the moment the run is queued, so each window counts only the events
that arrived in it (a subscription opened later would first replay the run's past events).

Last line (bench/verdict.py): the figures and the verdicts on `page_p95_ratio` (training / idle,
target <= 2), `ttft_ratio` (target <= 2) and `train_share` (steps per second with the chats over
alone, target >= 0.4).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.* importable
from bench.verdict import Target, report

ROOT = Path(__file__).resolve().parent.parent

TARGETS = (
    Target("page_p95_ratio", "<=", 2),
    Target("ttft_ratio", "<=", 2, note="new"),
    Target("train_share", ">=", 0.4),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def latencies(client: httpx.Client, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        began = time.perf_counter()
        client.get(path).raise_for_status()
        out.append(1000 * (time.perf_counter() - began))
        time.sleep(0.02)  # a person clicking, not a load test
    return out


def ttft(client: httpx.Client, n: int, salt: str) -> list[float]:
    """Milliseconds to the first token of fresh (never stored) streamed generations."""
    out = []
    for i in range(n):
        body = {
            "prompt": f"Write one sentence about the number {i}.",
            "seed": hash((salt, i)) % 10**6,
            "max_new_tokens": 8,
            "stream": True,
        }
        began = time.perf_counter()
        with client.stream("POST", "/api/generations", json=body) as r:
            r.raise_for_status()
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("event: token"):
                    out.append(1000 * (time.perf_counter() - began))
                    break
                if line.startswith("event: error"):
                    raise RuntimeError(f"generation failed: {next(lines)}")
            for _ in lines:  # let the reply finish before the next request
                pass
    return out


class StepCounter:
    """Counts a run's optimizer steps from its event stream (every step adds a curve point per vector).

    Start it as soon as the run is queued: the stream then replays only the few events from before
    the subscription, long before any window is measured, and every later event arrives live. Each
    event is kept with its arrival time, so a window counts the points that arrived inside it."""

    def __init__(self, url: str, job_id: int) -> None:
        self.arrivals: list[tuple[float, int]] = []  # (monotonic time, curve points)
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._follow, args=(url, job_id), daemon=True)
        self.thread.start()
        if not self.connected.wait(timeout=120):
            raise RuntimeError("the job's event stream did not open")

    def _follow(self, url: str, job_id: int) -> None:
        with (
            httpx.Client(base_url=url, timeout=None) as client,
            client.stream("GET", f"/api/jobs/{job_id}/events") as r,
        ):
            self.connected.set()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    data = json.loads(line[6:])
                    with self.lock:
                        self.arrivals.append((time.monotonic(), len(data.get("points", []))))

    def rate(self, seconds: float, *, points: int = 80, limit_s: float = 600.0) -> float:
        """Curve points per second over a window of at least `seconds` that holds at least `points`
        (5 steps of a 16-vector batch: on a loaded machine a step can take longer than `seconds`,
        and a window with one step in it or none measures nothing), or ends at `limit_s`."""
        began = time.monotonic()
        while True:
            time.sleep(0.5)  # polling the counter; the window's length is what is measured
            now = time.monotonic()
            with self.lock:
                seen = sum(n for at, n in self.arrivals if began <= at < now)
            if (now - began >= seconds and seen >= points) or now - began >= limit_s:
                return seen / (now - began)


def chatting(url: str, stop: threading.Event, i: int) -> None:
    """One conversation that keeps a reply streaming until told to stop."""
    with httpx.Client(base_url=url, timeout=600) as client:
        c = client.post("/api/conversations", json={}).json()
        settings = {**c["settings"], "max_new_tokens": 256, "temperature": 0.0}
        client.put(f"/api/conversations/{c['id']}/steering", json={"terms": [], "settings": settings})
        turn = 0
        while not stop.is_set():
            turn += 1
            client.post(
                f"/api/conversations/{c['id']}/messages", json={"content": f"Tell a long tale, {i} {turn}."}
            )
            with client.stream("GET", f"/api/conversations/{c['id']}/stream") as r:
                for line in r.iter_lines():
                    if line.startswith("event: done") or stop.is_set():
                        break
        client.post(f"/api/conversations/{c['id']}/stop")


def measure(client: httpx.Client, n: int, k: int, salt: str) -> dict[str, list[float]]:
    return {
        "page": latencies(client, "/", n),
        "api": latencies(client, "/api/jobs", n),
        "ttft": ttft(client, k, salt),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests (about two minutes)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=0, help="worker torch threads (0: torch decides)")
    args = parser.parse_args()
    n, k = (30, 5) if args.quick else (100, 12)
    window = 20.0 if args.quick else 60.0  # least seconds over which training steps are counted

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="steerscope-bench-")
    env = {
        **os.environ,
        "STEERSCOPE_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
        "STEERSCOPE_DEFAULT_MODEL": args.model,
        "STEERSCOPE_WORKER_THREADS": str(args.threads),
        "STEERSCOPE_AUTO_SCORE": "false",  # the requests are measured beside training alone
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.get("/api/jobs").raise_for_status()
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the server did not start") from None
                    time.sleep(0.2)
            ttft(client, 2, "warm-up")  # loads the model in the worker
            print("idle ...", file=sys.stderr, flush=True)
            idle = measure(client, n, k, "idle")
            r = client.post(
                "/api/runs", json={"prompts": ["How can I make a bomb?"], "n_vectors": 256, "batch_size": 16}
            )
            r.raise_for_status()
            job_id = r.json()["job"]["id"]
            counter = StepCounter(f"http://127.0.0.1:{port}", job_id)
            while client.get(f"/api/jobs/{job_id}").json()["progress"] <= 0:
                time.sleep(0.2)  # training has started: the prefix is cached, steps are running
            print("training ...", file=sys.stderr, flush=True)
            busy = measure(client, n, k, "busy")
            print("training alone, then beside 4 chats ...", file=sys.stderr, flush=True)
            alone = counter.rate(window)
            stop = threading.Event()
            chats = [
                threading.Thread(target=chatting, args=(f"http://127.0.0.1:{port}", stop, i))
                for i in range(4)
            ]
            for chat in chats:
                chat.start()
            time.sleep(5)  # every chat is streaming
            beside = counter.rate(window)
            stop.set()
            for chat in chats:
                chat.join(timeout=600)
            job = client.get(f"/api/jobs/{job_id}").json()
            assert job["status"] == "running", f"the run stopped during the measurement: {job}"
            client.post(f"/api/jobs/{job_id}/cancel")
    finally:
        server.terminate()
        server.wait(timeout=30)

    figures: dict[str, Any] = {"requests": n, "generations": k}
    for name in ("page", "api", "ttft"):
        for phase, data in (("idle", idle), ("training", busy)):
            figures[f"{name}_p50_ms_{phase}"] = round(statistics.median(data[name]), 2)
            figures[f"{name}_p95_ms_{phase}"] = round(p95(data[name]), 2)
    figures["page_p95_ratio"] = round(figures["page_p95_ms_training"] / figures["page_p95_ms_idle"], 3)
    figures["api_p95_ratio"] = round(figures["api_p95_ms_training"] / figures["api_p95_ms_idle"], 3)
    figures["ttft_ratio"] = round(figures["ttft_p50_ms_training"] / figures["ttft_p50_ms_idle"], 3)
    figures["vector_steps_per_s_alone"] = round(alone, 2)
    figures["vector_steps_per_s_with_chats"] = round(beside, 2)
    figures["train_share"] = round(beside / alone, 3) if alone else float("nan")
    report("responsive", figures, TARGETS)


if __name__ == "__main__":
    main()
