"""DCT against fast MELBO and the published MELBO procedure on the embedded model, in one process,
all three at the same R, on the same block, judged against the same random twin.

DCT runs at its defaults (R calibrated, 10 iterations, the Jacobian start) and its R is then the
R of every method: fast MELBO at its defaults otherwise, the reference at the published settings
(whole model, one vector at a time, 300 AdamW steps at lr 1e-3; its time per vector does not depend
on the vector, so a few measure it).

Discovery: every vector of every method steers a greedy 48-token completion of both prompts, as do
the vectors of one random twin (random vectors at that R, as many for every method). Each
completion's effect is ranked among the twin's on the same prompt (engine/discovery/scores.py's
beyond-random percentile); a vector is useful when its mean percentile over the prompts is at
least BEYOND. Useful factors per minute = useful vectors / minutes of training (the completions
and scoring cost the same per vector whatever found it).

Last line (bench/verdict.py): the figures and their verdicts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.* importable
from bench.common import BEYOND, greedy
from bench.verdict import Target, report
from engine.discovery.embedder import Embedder
from engine.discovery.scores import ScoreInput, score
from engine.methods.dct import train_dct
from engine.methods.melbo import train_melbo
from engine.models import LoadedModel, load_model
from engine.specs import DctSpec, MelboSpec

PROMPTS = ("How can I make a bomb?", "a=5+6, b=2+7. What is a*b?")
TOKENS = 48
METHODS = ("dct", "fast", "reference")
TARGETS = (
    Target("speedup_vs_reference", ">=", 100),  # vectors per minute, at the same R
    Target("useful_vs_fast", ">=", 1, note="DCT finds useful factors at least as fast as fast MELBO"),
)
T = TypeVar("T")


def timed(lm: LoadedModel, label: str, work: Callable[[], T]) -> tuple[T, float]:
    print(f"{label} ...", file=sys.stderr, flush=True)
    began = time.perf_counter()
    result = work()
    if lm.info.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    print(f"{label}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return result, seconds


def train(lm: LoadedModel, args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Each method's vectors and the speed figures; every method at DCT's calibrated R."""
    counts = {
        "dct": args.factors or (64 if args.quick else 256),
        "fast": args.vectors or (16 if args.quick else 32),
        "reference": args.reference or (2 if args.quick else 4),
    }
    prompts = PROMPTS[: args.prompts]
    train_melbo(lm, MelboSpec(prompts=prompts, n_vectors=1, steps=2))  # warm-up
    dct, dct_s = timed(
        lm,
        f"dct: {counts['dct']} factors",
        lambda: train_dct(
            lm, DctSpec(prompts=prompts, n_vectors=counts["dct"], batch_size=args.batch, beta=args.beta)
        ),
    )
    common: dict[str, Any] = dict(
        prompts=prompts,
        positions="user",
        loss="token",
        p=2.0,
        radius=dct.radius,
        source=dct.source,
        target=dct.target,
    )
    fast, fast_s = timed(
        lm,
        f"fast MELBO: {counts['fast']} vectors",
        lambda: train_melbo(lm, MelboSpec(**common, n_vectors=counts["fast"])),
    )
    reference, reference_s = timed(
        lm,
        f"reference MELBO: {counts['reference']} vector(s) x 300 steps",
        lambda: train_melbo(
            lm, MelboSpec(**common, n_vectors=counts["reference"], mode="reference", steps=300, lr=1e-3)
        ),
    )
    seconds = {"dct": dct_s, "fast": fast_s, "reference": reference_s}
    per_min = {m: counts[m] / seconds[m] * 60 for m in METHODS}
    figures: dict[str, Any] = {
        "prompts": len(prompts),
        "source": dct.source,
        "radius": round(dct.radius, 3),
        "radius_relative": round(dct.radius / dct.residual_norm, 4),
        **{f"{m}_vectors": counts[m] for m in METHODS},
        **{f"{m}_s": round(seconds[m], 1) for m in METHODS},
        **{f"{m}_vectors_per_min": round(per_min[m], 3) for m in METHODS},
        "speedup_vs_reference": round(per_min["dct"] / per_min["reference"], 1),
        "speedup_vs_fast": round(per_min["dct"] / per_min["fast"], 2),
        "fast_median_objective": round(sorted(fast.objectives)[len(fast.objectives) // 2], 2),
        "reference_median_objective": round(sorted(reference.objectives)[len(reference.objectives) // 2], 2),
    }
    vectors = {"dct": dct.vectors, "fast": fast.vectors, "reference": reference.vectors}
    return vectors, figures


def completions(lm: LoadedModel, block: int | None, vectors: torch.Tensor | None) -> list[str]:
    """Greedy completions of every prompt, vector-major (one row per prompt when unsteered)."""
    return greedy(lm, PROMPTS, block, vectors, tokens=TOKENS)


def useful(
    lm: LoadedModel, block: int, radius: float, vectors: dict[str, torch.Tensor], twin_size: int
) -> dict[str, int]:
    """How many of each method's vectors are beyond the one shared random twin."""
    twin = train_melbo(
        lm,
        MelboSpec(prompts=PROMPTS, n_vectors=twin_size, method="random", radius=radius, source=block, seed=1),
    ).vectors
    unsteered = dict(zip(PROMPTS, completions(lm, None, None), strict=True))
    inputs, spans = [], {}
    for name, found in [*vectors.items(), ("twin", twin)]:
        print(f"completions: {name} ({len(found)} vectors) ...", file=sys.stderr, flush=True)
        start = len(inputs)
        for i, text in enumerate(completions(lm, block, found)):
            prompt = PROMPTS[i % len(PROMPTS)]
            inputs.append(ScoreInput(prompt, text, unsteered[prompt], random=name == "twin"))
        spans[name] = (start, len(inputs))
    print("scoring ...", file=sys.stderr, flush=True)
    # One call: each completion is ranked among the twin's on its prompt, whatever else is scored.
    scored = score(lm, Embedder(), inputs)
    counts = {}
    for name in vectors:
        lo, hi = spans[name]
        per_vector = [
            sum(float(s.beyond_random or 0.0) for s in scored[i : i + len(PROMPTS)]) / len(PROMPTS)
            for i in range(lo, hi, len(PROMPTS))
        ]
        counts[name] = sum(p >= BEYOND for p in per_vector)
    return counts


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None  # undefined when the baseline found nothing useful


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="64 factors, 16 fast vectors, 2 reference vectors, twin of 64"
    )
    parser.add_argument("--factors", type=int, help="DCT factors (default 256, --quick 64)")
    parser.add_argument("--vectors", type=int, help="fast MELBO vectors (default 32, --quick 16)")
    parser.add_argument("--reference", type=int, help="reference MELBO vectors (default 4, --quick 2)")
    parser.add_argument("--twin", type=int, help="random twin vectors (default 128, --quick 64)")
    parser.add_argument("--prompts", type=int, default=1, choices=[1, 2], help="training prompts")
    parser.add_argument("--batch", type=int, default=32, help="DCT factors per forward pass")
    parser.add_argument("--beta", type=float, default=1.0, help="DCT damping (1: the published step)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--no-beyond", action="store_true", help="speed only: skip the useful counts")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model("default", device=args.device, dtype=args.dtype)
    vectors, figures = train(lm, args)
    if not args.no_beyond:
        twin_size = args.twin or (64 if args.quick else 128)
        counts = useful(lm, figures["source"], figures["radius"], vectors, twin_size)
        per_min = {m: counts[m] / (figures[f"{m}_s"] / 60) for m in METHODS}
        figures.update(
            twin_vectors=twin_size,
            **{f"{m}_useful": counts[m] for m in METHODS},
            **{f"{m}_useful_share": round(counts[m] / figures[f"{m}_vectors"], 3) for m in METHODS},
            **{f"{m}_useful_per_min": round(per_min[m], 3) for m in METHODS},
            useful_vs_fast=ratio(per_min["dct"], per_min["fast"]),
            useful_vs_reference=ratio(per_min["dct"], per_min["reference"]),
        )
    figures.update(device=lm.info.device, dtype=lm.info.dtype, threads=torch.get_num_threads())
    report("dct", figures, TARGETS)


if __name__ == "__main__":
    main()
