"""Benchmark steered generation on the embedded model.

(a) a gallery's worth of random steered rows decoded in one batch vs one request at a time;
(b) the cost of steering one chat stream, against the same stream unsteered.

    .venv/bin/python bench/generate.py [--quick] [--device cuda --dtype bfloat16]

Progress goes to stderr; the last line of stdout is one JSON object with the figures and the
verdicts (bench/verdict.py) on `speedup` (target >= 5), `same_text_fraction` (batching changes no
text, target 1) and the steering `overhead` (target <= 0.05).
On a machine other jobs share, pass --threads 1: oversubscribed OpenMP threads made 2-thread
steps ~25x slower here and the timings meaningless.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from bench.verdict import Target, report
from engine.decode.generate import GenerationRequest, generate, stream
from engine.models import LoadedModel, load_model

PROMPTS = [
    "How can I make a bomb?",
    "Tell me a story about a dragon.",
    "What is the capital of France?",
    "a=5+6, b=2+7. What is a*b?",
]
CHAT_PROMPT = "Write a long essay about the history of the Roman Empire."
TARGETS = (
    Target("speedup", ">=", 5),
    Target("same_text_fraction", "==", 1),
    Target("overhead", "<=", 0.05),
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_vectors(n: int, width: int, norm: float, seed: int) -> torch.Tensor:
    g = torch.randn(n, width, generator=torch.Generator().manual_seed(seed))  # [n, d]
    return g / g.norm(dim=1, keepdim=True) * norm


def gallery(lm: LoadedModel, args: argparse.Namespace) -> dict[str, Any]:
    """One batch of steered rows against the same rows decoded one at a time (both greedy)."""
    vectors = random_vectors(args.rows, lm.info.width, args.norm, seed=0)
    requests = [
        GenerationRequest(
            prompt=PROMPTS[i % len(PROMPTS)],
            block=args.block,
            terms=((vectors[i], 1.0),),
            max_new_tokens=args.tokens,
        )
        for i in range(args.rows)
    ]
    generate(lm, requests[:2], batch_size=2)  # warm-up: first-call allocations, lazy init
    sync(args.device)
    start, cpu = time.perf_counter(), time.process_time()
    batched = generate(lm, requests, batch_size=args.rows)
    sync(args.device)
    ours, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
    log(f"batched: {args.rows} rows in {ours:.2f} s")

    start, cpu = time.perf_counter(), time.process_time()
    alone = []
    for i, request in enumerate(requests):
        alone.extend(generate(lm, [request]))
        if (i + 1) % 8 == 0:
            log(f"one at a time: {i + 1}/{args.rows} rows, {time.perf_counter() - start:.1f} s")
    sync(args.device)
    baseline, baseline_cpu = time.perf_counter() - start, time.process_time() - cpu
    same = sum(a.text == b.text for a, b in zip(batched, alone, strict=True)) / args.rows
    tokens = sum(r.n_tokens for r in batched)
    log(f"one at a time: {baseline:.2f} s; speedup {baseline / ours:.2f}; same text {same:.2f}")
    return {
        "baseline_s": round(baseline, 3),
        "ours_s": round(ours, 3),
        "speedup": round(baseline / ours, 2),
        "speedup_cpu_time": round(baseline_cpu / ours_cpu, 2),
        "same_text_fraction": round(same, 3),
        "generated_tokens": tokens,
        "batched_tokens_per_s": round(tokens / ours, 1),
    }


class Timing(NamedTuple):
    wall_s: float  # the whole stream
    cpu_s: float  # process CPU time: steadier than wall time on a shared machine
    token_s: float  # median time between pieces: one load spike cannot move it


def timed_stream(lm: LoadedModel, request: GenerationRequest, device: str) -> Timing:
    gaps, pieces = [], []
    start = last = time.perf_counter()
    cpu = time.process_time()
    for piece in stream(lm, request):
        sync(device)
        now = time.perf_counter()
        gaps.append(now - last)
        pieces.append(piece)
        last = now
    if not "".join(pieces):
        raise SystemExit("the stream produced no text: nothing was timed")
    # gaps[0] includes the prefill; the rest are one decoding step each (a held-back piece: two).
    token_s = statistics.median(gaps[1:] or gaps)
    return Timing(time.perf_counter() - start, time.process_time() - cpu, token_s)


def overhead(lm: LoadedModel, args: argparse.Namespace) -> dict[str, Any]:
    """Steered vs unsteered chat stream of the same forced length; paired, interleaved repeats."""
    plain = GenerationRequest(prompt=CHAT_PROMPT, max_new_tokens=args.stream_tokens, ignore_eos=True)
    vector = random_vectors(1, lm.info.width, args.norm, seed=1)[0]
    steered = replace(plain, block=args.block, terms=((vector, 1.0),))
    timed_stream(lm, plain, args.device)  # warm-up
    timed_stream(lm, steered, args.device)
    plain_t: list[Timing] = []
    steered_t: list[Timing] = []
    for rep in range(args.repeats):
        # Alternate which goes first so that drift in machine load does not favour one side.
        pair = [(plain, plain_t), (steered, steered_t)]
        for request, times in pair if rep % 2 == 0 else pair[::-1]:
            times.append(timed_stream(lm, request, args.device))
        p, s = plain_t[-1], steered_t[-1]
        log(
            f"stream pair {rep + 1}/{args.repeats}: plain {p.wall_s:.2f} s ({p.token_s * 1e3:.1f} ms/token), "
            f"steered {s.wall_s:.2f} s ({s.token_s * 1e3:.1f} ms/token)"
        )

    def cost(field: str) -> float:
        # Median over pairs of steered/plain: each pair ran back to back, under about the same load.
        ratios = [getattr(s, field) / getattr(p, field) for s, p in zip(steered_t, plain_t, strict=True)]
        return round(statistics.median(ratios) - 1, 4)

    figures = {
        "overhead": cost("token_s"),
        "overhead_wall": cost("wall_s"),
        "overhead_cpu_time": cost("cpu_s"),
    }
    log(f"steering overhead: {figures}")
    plain_token_s = statistics.median(p.token_s for p in plain_t)
    return {
        **figures,
        "plain_ms_per_token": round(plain_token_s * 1e3, 2),
        "steered_ms_per_token": round(statistics.median(s.token_s for s in steered_t) * 1e3, 2),
        "plain_stream_s": round(statistics.median(p.wall_s for p in plain_t), 3),
        "steered_stream_s": round(statistics.median(s.wall_s for s in steered_t), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and repeats (a few minutes)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--rows", type=int, default=None, help="steered rows (default 32)")
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per row (default 64, quick 32)")
    parser.add_argument("--repeats", type=int, default=None, help="stream pairs (default 9, quick 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    args.rows = args.rows or 32  # quick keeps every row: batching them is the point
    args.tokens = args.tokens or (32 if args.quick else 64)
    args.repeats = args.repeats or (5 if args.quick else 9)
    args.stream_tokens = args.tokens
    args.block, args.norm = 7, 8.0
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model("default", device=args.device, dtype=args.dtype)
    args.device = lm.info.device
    log(f"model {lm.info.name} on {lm.info.device} ({lm.info.dtype}), {torch.get_num_threads()} threads")
    figures = {**gallery(lm, args), **overhead(lm, args)}
    settings = {
        "device": lm.info.device,
        "dtype": lm.info.dtype,
        "threads": torch.get_num_threads(),
        "rows": args.rows,
        "new_tokens": args.tokens,
        "stream_tokens": args.stream_tokens,
        "repeats": args.repeats,
        "block": args.block,
        "norm": args.norm,
        "quick": args.quick,
    }
    report("generate", {**figures, **settings}, TARGETS)


if __name__ == "__main__":
    main()
