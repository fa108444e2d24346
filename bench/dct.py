"""DCT against fast MELBO and the published MELBO procedure on the embedded model, in one process.

Speed: vectors per minute of each method on the same prompts and target positions. DCT runs at
its defaults (R calibrated, 10 iterations, the Jacobian start), fast MELBO at its defaults, the
reference at the published settings (whole model, one vector at a time, 300 AdamW steps at lr
1e-3; its time per vector does not depend on the vector, so fewer vectors measure it as well).

Discovery: the share of each method's vectors beyond the random twin. Every DCT factor and fast
MELBO vector steers a greedy 48-token completion of both prompts, as does a random twin of each
(as many random vectors at that method's own R); each completion's effect is ranked among its
twin's on the same prompt (engine/discovery/scores.py's beyond-random percentile), and a vector counts as
beyond random when its mean percentile over the prompts is at least BEYOND.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.* importable
from bench.common import BEYOND, greedy
from engine.discovery.embedder import Embedder
from engine.discovery.scores import ScoreInput, score
from engine.methods.dct import train_dct
from engine.methods.melbo import train_melbo
from engine.models import LoadedModel, load_model
from engine.specs import DctSpec, MelboSpec

PROMPTS = ("How can I make a bomb?", "a=5+6, b=2+7. What is a*b?")
TOKENS = 48
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


def speed(lm: LoadedModel, args: argparse.Namespace) -> dict[str, Any]:
    factors = args.factors or (64 if args.quick else 256)
    fast_n = args.vectors or (8 if args.quick else 16)
    reference_n = 1 if args.quick else 2
    prompts = PROMPTS[: args.prompts]
    train_melbo(lm, MelboSpec(prompts=prompts, n_vectors=1, steps=2))  # warm-up
    dct, dct_s = timed(
        lm,
        f"dct: {factors} factors",
        lambda: train_dct(
            lm, DctSpec(prompts=prompts, n_vectors=factors, batch_size=args.batch, beta=args.beta)
        ),
    )
    common: dict[str, Any] = dict(prompts=prompts, positions="user", loss="token", p=2.0)
    fast, fast_s = timed(
        lm, f"fast MELBO: {fast_n} vectors", lambda: train_melbo(lm, MelboSpec(**common, n_vectors=fast_n))
    )
    reference, reference_s = timed(
        lm,
        f"reference MELBO: {reference_n} vector(s) x 300 steps",
        lambda: train_melbo(
            lm,
            MelboSpec(
                **common, n_vectors=reference_n, mode="reference", steps=300, lr=1e-3, radius=fast.radius
            ),
        ),
    )
    per_min = {
        "dct": factors / dct_s * 60,
        "fast": fast_n / fast_s * 60,
        "reference": reference_n / reference_s * 60,
    }
    return {
        "dct": dct,
        "fast": fast,
        "figures": {
            "factors": factors,
            "fast_vectors": fast_n,
            "reference_vectors": reference_n,
            "prompts": len(prompts),
            "dct_radius": round(dct.radius, 3),
            "dct_radius_relative": round(dct.radius / dct.residual_norm, 4),
            "melbo_radius": round(fast.radius, 3),
            "dct_s": round(dct_s, 1),
            "fast_s": round(fast_s, 1),
            "reference_s": round(reference_s, 1),
            "dct_vectors_per_min": round(per_min["dct"], 2),
            "fast_vectors_per_min": round(per_min["fast"], 2),
            "reference_vectors_per_min": round(per_min["reference"], 3),
            "speedup_vs_reference": round(per_min["dct"] / per_min["reference"], 1),
            "speedup_vs_fast": round(per_min["dct"] / per_min["fast"], 2),
            "reference_median_objective": round(
                sorted(reference.objectives)[len(reference.objectives) // 2], 2
            ),
        },
    }


def completions(lm: LoadedModel, block: int | None, vectors: torch.Tensor | None) -> list[str]:
    """Greedy completions of every prompt, vector-major (one row per prompt when unsteered)."""
    return greedy(lm, PROMPTS, block, vectors, tokens=TOKENS)


def beyond_share(
    lm: LoadedModel, embedder: Embedder, block: int, radius: float, vectors: torch.Tensor, seed: int
) -> float:
    """Share of the vectors whose mean beyond-random percentile reaches BEYOND."""
    n = len(vectors)
    twin = train_melbo(
        lm, MelboSpec(prompts=PROMPTS, n_vectors=n, method="random", radius=radius, source=block, seed=seed)
    )
    unsteered = dict(zip(PROMPTS, completions(lm, None, None), strict=True))
    inputs = []
    for texts, random in (
        (completions(lm, block, vectors), False),
        (completions(lm, block, twin.vectors), True),
    ):
        for i, text in enumerate(texts):
            prompt = PROMPTS[i % len(PROMPTS)]
            inputs.append(ScoreInput(prompt, text, unsteered[prompt], random=random))
    scored = score(lm, embedder, inputs)[: n * len(PROMPTS)]
    per_vector = [
        sum(float(s.beyond_random or 0.0) for s in scored[i * len(PROMPTS) : (i + 1) * len(PROMPTS)])
        / len(PROMPTS)
        for i in range(n)
    ]
    return sum(p >= BEYOND for p in per_vector) / n


def beyond(lm: LoadedModel, measured: dict[str, Any]) -> dict[str, Any]:
    dct, fast = measured["dct"], measured["fast"]
    embedder = Embedder()
    print("beyond random: DCT factors and their twin ...", file=sys.stderr, flush=True)
    dct_share = beyond_share(lm, embedder, dct.source, dct.radius, dct.vectors, seed=1)
    print("beyond random: fast MELBO vectors and their twin ...", file=sys.stderr, flush=True)
    melbo_share = beyond_share(lm, embedder, fast.source, fast.radius, fast.vectors, seed=2)
    return {"dct_beyond_random": round(dct_share, 3), "melbo_beyond_random": round(melbo_share, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 factors, 8 fast vectors, 1 reference vector")
    parser.add_argument("--factors", type=int, help="DCT factors (default 256, --quick 64)")
    parser.add_argument("--vectors", type=int, help="fast MELBO vectors (default 16, --quick 8)")
    parser.add_argument("--prompts", type=int, default=1, choices=[1, 2], help="training prompts")
    parser.add_argument("--batch", type=int, default=32, help="DCT factors per forward pass")
    parser.add_argument("--beta", type=float, default=1.0, help="DCT damping (1: the published step)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--no-beyond", action="store_true", help="speed only: skip the beyond-random shares")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model("default", device=args.device, dtype=args.dtype)
    measured = speed(lm, args)
    shares = {} if args.no_beyond else beyond(lm, measured)
    print(
        json.dumps(
            {
                "bench": "dct",
                "device": lm.info.device,
                "dtype": lm.info.dtype,
                "threads": torch.get_num_threads(),
                **measured["figures"],
                **shares,
            }
        )
    )


if __name__ == "__main__":
    main()
