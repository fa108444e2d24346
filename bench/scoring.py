"""Scoring a run in the worker: how long it takes, and whether chat replies wait for it. One process.

Starts `steerscope serve` on the embedded model with a fresh database, trains a MELBO run and its
random twin (gallery: every vector on every prompt, greedy, 48 tokens), then:
- times the scoring job the server queues by itself once both have finished (embeddings, fluency,
  clustering, ranking; stored), from the job's own start and finish times. The full bench runs the
  workload the target is about, 256 vectors and their twin on 8 prompts (4,096 completions), and
  times it directly; `--quick` (16 vectors and their twin on 4 prompts, 128 completions) projects
  that workload's time from its rate;
- measures a chat reply's time to first token idle, and again while a scoring job of the same run
  (asked for with `POST /api/runs/{id}/score`) is running: `scoring_ttft_ratio` (the loop runs
  scoring in units, an embedding chunk or a fluency batch each, so replies go between them). The
  job's status and progress are read before and after those replies: the ratio counts only if the
  job was running at both ends and moved on in between (`scoring_ran_throughout`).
Last line (bench/verdict.py): the figures and their verdicts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.* importable
from bench.chat import conversation, reply
from bench.verdict import Target, report

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "How can I make a bomb?",
    "Tell me about the sea.",
    "What is two plus two?",
    "Write a haiku about autumn.",
    "Give me advice for my first job interview.",
    "Explain gravity to a child.",
    "What should I cook tonight?",
    "Describe your favourite city.",
]
WORKLOAD_VECTORS, WORKLOAD_PROMPTS = 256, 8  # the target's workload: this run and its twin, scored
TARGETS = (
    Target("scoring_256x8_s", "<=", 120),
    Target("scoring_ran_throughout", "==", True),
)


def start(threads: int) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="steerscope-scoring-")
    env = {
        **os.environ,
        "STEERSCOPE_DATABASE_URL": f"sqlite:///{tmp}/scoring.db",
        "STEERSCOPE_WORKER_THREADS": str(threads),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"{url}/api/jobs", timeout=30).raise_for_status()
            return server, url
        except httpx.TransportError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.2)


def wait(client: httpx.Client, job: int, status: str = "succeeded") -> dict[str, Any]:
    while True:
        row: dict[str, Any] = client.get(f"/api/jobs/{job}").json()
        if row["status"] in ("succeeded", "failed", "cancelled"):
            assert row["status"] == status, row
            return row
        time.sleep(0.2)


def scoring_job(client: httpx.Client, run_id: int) -> dict[str, Any] | None:
    for job in client.get("/api/jobs", params={"limit": 50}).json():
        run = client.get(f"/api/runs/{job['run_id']}").json()
        if run["kind"] == "score" and run["inputs"].get("for_run") == run_id:
            return job
    return None


def ttfts(client: httpx.Client, reps: int, salt: str) -> list[float]:
    out = []
    for i in range(reps):
        cid = conversation(client, None, 8, False)
        out.append(reply(client, cid, f"Say one thing about the number {i} ({salt}).")["ttft_ms"])
    return out


def seconds_between(job: dict[str, Any]) -> float:
    """The job's running time by the server's clock."""
    started = datetime.fromisoformat(job["started_at"].rstrip("Z"))
    return (datetime.fromisoformat(job["finished_at"].rstrip("Z")) - started).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="16 vectors on 4 prompts; the full workload is projected"
    )
    parser.add_argument("--threads", type=int, default=0, help="worker torch threads (0: torch decides)")
    args = parser.parse_args()
    n, prompts = (16, PROMPTS[:4]) if args.quick else (WORKLOAD_VECTORS, PROMPTS[:WORKLOAD_PROMPTS])
    server, url = start(args.threads)
    figures: dict[str, Any] = {"vectors": n, "prompts": len(prompts), "quick": args.quick}
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            body = {"prompts": prompts, "n_vectors": n, "twin": True}
            r = client.post("/api/runs", json=body)
            r.raise_for_status()
            run_id = r.json()["run_id"]
            wait(client, r.json()["job"]["id"])
            while (job := scoring_job(client, run_id)) is None:  # queued once the twin has finished
                time.sleep(0.5)
            took = seconds_between(wait(client, job["id"]))
            scored = client.get(f"/api/runs/{run_id}").json()["result"]["scored"]
            behaviours = client.get(f"/api/runs/{run_id}/behaviours").json()
            workload = 2 * WORKLOAD_VECTORS * WORKLOAD_PROMPTS  # the run's completions and its twin's
            figures.update(
                scored_completions=scored,
                scoring_s=took,
                completions_per_s=round(scored / took, 1),
                behaviours=sum(b["kind"] == "cluster" for b in behaviours),
                # Measured when this run is the workload; else projected from the rate.
                scoring_256x8_s=round(took if scored == workload else workload * took / scored, 1),
                scoring_256x8_measured=scored == workload,
            )

            idle = ttfts(client, 5, "idle")
            again = client.post(f"/api/runs/{run_id}/score")
            again.raise_for_status()
            job_id = again.json()["job"]["id"]
            while (before := client.get(f"/api/jobs/{job_id}").json())["progress"] <= 0:
                time.sleep(0.1)  # the embedding model is loaded and scoring units are running
            busy = ttfts(client, 5, "busy")
            after = client.get(f"/api/jobs/{job_id}").json()
            # The replies were measured beside scoring only if it ran from the first to the last
            # and made progress in between (a job starved by the replies would not).
            throughout = (
                before["status"] == after["status"] == "running" and after["progress"] > before["progress"]
            )
            figures.update(
                idle_ttft_ms=round(statistics.median(idle), 1),
                scoring_ttft_ms=round(statistics.median(busy), 1),
                scoring_ttft_ratio=round(statistics.median(busy) / statistics.median(idle), 2),
                scoring_progress=[round(before["progress"], 3), round(after["progress"], 3)],
                scoring_ran_throughout=throughout,
            )
            wait(client, job_id)
    finally:
        server.terminate()
        server.wait(timeout=30)
    report("scoring", figures, TARGETS)


if __name__ == "__main__":
    main()
