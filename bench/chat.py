"""Chat speed on the embedded model, through the server, in one run.

Starts `steerscope serve` with a fresh database and measures, per reply:
- one conversation idle: time to first token and tokens/s (both panes);
- the same while a MELBO run trains;
- 8 and 16 conversations sending at once against one alone: aggregate tokens/s
  (`concurrent_speedup`, target >= 3 on this CPU; `concurrent_speedup_16`, target >= 5);
- a conversation that arrives while 4 others are mid-reply: its time to first token over the idle
  one (`join_ttft_ratio`, target <= 1.5: it joins the running batch at the next step);
- a steered single pane against an unsteered one (`steering_overhead`, target <= 0.05);
- a conversation's second turn against its first, with new messages of one length
  (`second_turn_ttft_ratio`: the history is not prefilled again, target <= 0.5); the share of
  prompt tokens the worker took from kept prefixes comes from its log (`prefix_token_share`);
- the same turns on a second server that keeps no prefixes (`STEERSCOPE_PREFIX_CACHE_MB=0`, what
  a user ran before the decoder kept them): `second_turn_vs_no_cache` is the second turn's time to
  first token with kept prefixes over its time without.
Last line (bench/verdict.py): the figures and their verdicts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
    Target("concurrent_speedup", ">=", 3),
    Target("concurrent_speedup_16", ">=", 5),
    Target("join_ttft_ratio", "<=", 1.5),
    Target("steering_overhead", "<=", 0.05),
    Target("second_turn_ttft_ratio", "<=", 0.5, note="the history's prefix kept by the decoder"),
)


def start_server(args: argparse.Namespace, **settings: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`steerscope serve` on a fresh database; `settings` are further STEERSCOPE_ variables."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="steerscope-chat-")
    env = {
        **os.environ,
        "STEERSCOPE_DATABASE_URL": f"sqlite:///{tmp}/chat.db",
        "STEERSCOPE_WORKER_THREADS": str(args.threads),
        "STEERSCOPE_AUTO_SCORE": "false",  # chat is measured beside training, not beside a scoring job
        **{f"STEERSCOPE_{k.upper()}": v for k, v in settings.items()},
    }
    log = Path(tmp) / "server.log"  # the worker says how many replies it decoded together
    print(f"server log: {log}", file=sys.stderr)
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"{url}/api/jobs", timeout=30).raise_for_status()
            return server, url, log
        except httpx.TransportError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.2)


def conversation(client: httpx.Client, vector: int | None, tokens: int, unsteered_pane: bool) -> int:
    c = client.post("/api/conversations", json={"vector_id": vector}).json()
    settings = {
        **c["settings"],
        "max_new_tokens": tokens,
        "temperature": 0.0,
        "show_unsteered": unsteered_pane,
    }
    terms = [{"vector_id": vector}] if vector is not None else []
    client.put(f"/api/conversations/{c['id']}/steering", json={"terms": terms, "settings": settings})
    return int(c["id"])


def reply(
    client: httpx.Client, cid: int, text: str, streaming: threading.Event | None = None
) -> dict[str, float]:
    """Send, stream to the end; time to first token, wall time and tokens generated.

    `streaming` is set once the first text has arrived."""
    began = time.perf_counter()
    client.post(f"/api/conversations/{cid}/messages", json={"content": text}).raise_for_status()
    first = None
    with client.stream("GET", f"/api/conversations/{cid}/stream") as r:
        for line in r.iter_lines():
            # The first text: a token event, or a snapshot that already holds some.
            has_text = line.startswith("data: ") and any(json.loads(line[6:]).get("panes", {}).values())
            if first is None and (line.startswith("event: token") or has_text):
                first = time.perf_counter() - began
                if streaming is not None:
                    streaming.set()
            if line.startswith("event: done"):
                break
    wall = time.perf_counter() - began
    messages = client.get(f"/api/conversations/{cid}").json()["messages"]
    turn = max(m["turn"] for m in messages)
    tokens = sum(m["n_tokens"] for m in messages if m["role"] == "assistant" and m["turn"] == turn)
    return {"ttft_ms": 1000 * (first or wall), "wall_s": wall, "tokens": tokens}


def single(
    client: httpx.Client, vector: int | None, tokens: int, reps: int, *, both: bool = True
) -> dict[str, float]:
    runs = []
    for i in range(reps):
        cid = conversation(client, vector, tokens, both)
        runs.append(reply(client, cid, f"Write a long story about the number {i}."))
    return {
        "ttft_ms": statistics.median(r["ttft_ms"] for r in runs),
        "tokens_per_s": sum(r["tokens"] for r in runs) / sum(r["wall_s"] for r in runs),
    }


def concurrent(url: str, vector: int, tokens: int, n: int) -> float:
    """Aggregate tokens/s of n conversations that send at the same moment."""
    with httpx.Client(base_url=url, timeout=600) as client:
        cids = [conversation(client, vector, tokens, True) for _ in range(n)]
    barrier, results = threading.Barrier(n), [dict[str, float]() for _ in range(n)]

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            barrier.wait()
            results[i] = reply(client, cids[i], f"Write a long story about the number {i}.")

    began = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(r["tokens"] for r in results) / (time.perf_counter() - began)


def _long_reply(url: str, cid: int, text: str, streaming: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=600) as client:
        reply(client, cid, text, streaming)


def join_ttft(url: str, vector: int, tokens: int, reps: int) -> float:
    """Median time to first token of a conversation sent while 4 others are mid-reply."""
    ttfts = []
    for rep in range(reps):
        with httpx.Client(base_url=url, timeout=600) as client:
            busy = [conversation(client, vector, 4 * tokens, True) for _ in range(4)]
            newcomer = conversation(client, vector, tokens, True)
        streaming = [threading.Event() for _ in busy]

        threads = [
            threading.Thread(
                target=_long_reply, args=(url, cid, f"Write a very long story about {rep}, {i}.", flag)
            )
            for i, (cid, flag) in enumerate(zip(busy, streaming, strict=True))
        ]
        for t in threads:
            t.start()
        for event in streaming:
            event.wait(timeout=600)
        with httpx.Client(base_url=url, timeout=600) as client:
            ttfts.append(reply(client, newcomer, f"Write a story about the number {rep}.")["ttft_ms"])
            for cid in busy:  # their work is done: free the worker for the next measurement
                client.post(f"/api/conversations/{cid}/stop")
        for t in threads:
            t.join()
    return statistics.median(ttfts)


def one_vector(client: httpx.Client) -> int:
    """Train a one-vector run and return its vector's id."""
    r = client.post("/api/runs", json={"prompts": ["How can I make a bomb?"], "n_vectors": 1})
    job = r.json()["job"]["id"]
    while client.get(f"/api/jobs/{job}").json()["status"] != "succeeded":
        time.sleep(0.5)
    return int(client.get(f"/api/runs/{r.json()['run_id']}/vectors").json()[0]["id"])


def turns(client: httpx.Client, vector: int, tokens: int, reps: int) -> tuple[float, float]:
    """Median time to first token of new conversations' first and second turns (both panes), with
    new messages of the same length."""
    first, second = [], []
    for i in range(reps):
        cid = conversation(client, vector, tokens, True)
        first.append(reply(client, cid, f"Write a long story about the number {i}.")["ttft_ms"])
        second.append(reply(client, cid, f"Write a long story about the number {(i + 5) % 10}.")["ttft_ms"])
    return statistics.median(first), statistics.median(second)


def prefix_share(log: Path) -> float | None:
    """The share of prompt tokens reused from kept prefixes, as the worker last logged it."""
    found = re.findall(r"prefix cache: (\d+) of (\d+) prompt tokens", log.read_text(errors="replace"))
    if not found:
        return None  # a worker without kept prefixes
    reused, total = map(int, found[-1])
    return round(reused / total, 3) if total else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer and shorter replies (a few minutes)")
    parser.add_argument("--threads", type=int, default=0, help="worker torch threads (0: torch decides)")
    args = parser.parse_args()
    tokens, reps = (48, 3) if args.quick else (96, 6)
    server, url, log = start_server(args)
    figures: dict[str, Any] = {"max_new_tokens": tokens, "replies": reps}
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            vector = one_vector(client)
            single(client, vector, 8, 1)  # warm-up

            idle = single(client, vector, tokens, reps)
            figures.update(
                idle_ttft_ms=round(idle["ttft_ms"], 1), idle_tokens_per_s=round(idle["tokens_per_s"], 1)
            )

            steered = single(client, vector, tokens, reps, both=False)
            plain = single(client, None, tokens, reps, both=False)
            figures["steered_tokens_per_s"] = round(steered["tokens_per_s"], 1)
            figures["unsteered_tokens_per_s"] = round(plain["tokens_per_s"], 1)
            figures["steering_overhead"] = round(plain["tokens_per_s"] / steered["tokens_per_s"] - 1, 4)

            one = concurrent(url, vector, tokens, 1)
            eight = concurrent(url, vector, tokens, 8)
            sixteen = concurrent(url, vector, tokens, 16)
            figures.update(
                one_tokens_per_s=round(one, 1),
                eight_tokens_per_s=round(eight, 1),
                sixteen_tokens_per_s=round(sixteen, 1),
                concurrent_speedup=round(eight / one, 2),
                concurrent_speedup_16=round(sixteen / one, 2),
            )

            joined = join_ttft(url, vector, tokens, reps)
            figures.update(join_ttft_ms=round(joined, 1), join_ttft_ratio=round(joined / idle["ttft_ms"], 2))

            first, second = turns(client, vector, tokens, reps)
            figures.update(
                first_turn_ttft_ms=round(first, 1),
                second_turn_ttft_ms=round(second, 1),
                second_turn_ttft_ratio=round(second / first, 2),
            )

            r = client.post("/api/runs", json={"prompts": ["How can I make a bomb?"], "n_vectors": 256})
            job = r.json()["job"]["id"]
            while client.get(f"/api/jobs/{job}").json()["progress"] <= 0:
                time.sleep(0.2)
            busy = single(client, vector, tokens, reps)
            assert client.get(f"/api/jobs/{job}").json()["status"] == "running", (
                "the run ended during the test"
            )
            client.post(f"/api/jobs/{job}/cancel")
            figures.update(
                training_ttft_ms=round(busy["ttft_ms"], 1),
                training_tokens_per_s=round(busy["tokens_per_s"], 1),
                training_ttft_ratio=round(busy["ttft_ms"] / idle["ttft_ms"], 2),
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    figures["prefix_token_share"] = prefix_share(log)

    server, url, _ = start_server(args, prefix_cache_mb="0")  # the baseline: no prefixes kept
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            vector = one_vector(client)
            single(client, vector, 8, 1)  # warm-up
            first, second = turns(client, vector, tokens, reps)
    finally:
        server.terminate()
        server.wait(timeout=30)
    figures.update(
        no_cache_first_turn_ttft_ms=round(first, 1),
        no_cache_second_turn_ttft_ms=round(second, 1),
        second_turn_vs_no_cache=round(figures["second_turn_ttft_ms"] / second, 2),
    )
    report("chat", figures, TARGETS)


if __name__ == "__main__":
    main()
