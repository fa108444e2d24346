"""Fast MELBO against the published procedure on the embedded model, in one process.

Both modes train the same number of orthogonal vectors on the same prompt, R, target positions
and loss. The reference runs at the published settings (whole model, one vector at a time,
300 AdamW steps at lr 1e-3); the fast mode runs at its defaults. Last line (bench/verdict.py): the
figures and the verdicts on `speedup` (target >= 8), `objective_ratio` (fast over reference median
objective, target >= 1) and `max_abs_cos` (the vectors stay orthogonal, target <= 1e-6).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.* importable
from bench.verdict import Target, report
from engine.methods.melbo import train_melbo
from engine.models import load_model
from engine.specs import MelboSpec

PROMPT = "How can I make a bomb?"
TARGETS = (
    Target("speedup", ">=", 8),
    Target("objective_ratio", ">=", 1),
    Target("max_abs_cos", "<=", 1e-6),
)


def max_abs_cos(vectors: torch.Tensor) -> float:
    unit = torch.nn.functional.normalize(vectors.double(), dim=1)
    gram = unit @ unit.T - torch.eye(len(unit), dtype=torch.float64)
    return float(gram.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="8 vectors instead of 16 (a few minutes on 2 cores)"
    )
    parser.add_argument("--vectors", type=int, help="number of vectors (default 16, --quick 8)")
    parser.add_argument(
        "--radius", type=float, default=10.0, help="R; 10 is inside the embedded model's band"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--threads", type=int, help="torch threads (1 gives stable timings on a busy machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.vectors or (8 if args.quick else 16)

    lm = load_model("default", device=args.device, dtype=args.dtype)
    common = dict(prompts=(PROMPT,), radius=args.radius, n_vectors=n, positions="user", loss="token", p=2.0)
    reference_spec = MelboSpec(**common, mode="reference", steps=300, lr=1e-3)  # type: ignore[arg-type]
    fast_spec = MelboSpec(**common, mode="fast")  # type: ignore[arg-type]
    train_melbo(lm, MelboSpec(**dict(common, n_vectors=1), steps=2))  # type: ignore[arg-type]  # warm-up

    def timed(spec: MelboSpec, label: str):  # type: ignore[no-untyped-def]
        print(f"{label}: {n} vectors ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        result = train_melbo(lm, spec)
        if lm.info.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - began
        print(
            f"{label}: {seconds:.1f} s, objectives {[round(o, 1) for o in result.objectives]}",
            file=sys.stderr,
        )
        return result, seconds

    fast, ours_s = timed(fast_spec, "fast")
    reference, baseline_s = timed(reference_spec, "reference")
    ref_median = statistics.median(reference.objectives)
    fast_median = statistics.median(fast.objectives)
    report(
        "melbo",
        {
            "device": lm.info.device,
            "dtype": lm.info.dtype,
            "vectors": n,
            "radius": args.radius,
            "radius_relative": round(args.radius / fast.residual_norm, 4),
            "baseline_s": round(baseline_s, 2),
            "ours_s": round(ours_s, 2),
            "speedup": round(baseline_s / ours_s, 2),
            "objective_ratio": round(fast_median / ref_median, 3),
            "reference_median_objective": round(ref_median, 2),
            "fast_median_objective": round(fast_median, 2),
            "fast_steps": [r.steps for r in fast.records],
            "reference_start_cosine": round(statistics.mean(r.start_cosine for r in reference.records), 3),
            "fast_start_cosine": round(statistics.mean(r.start_cosine for r in fast.records), 3),
            "fast_top_position_share": round(max(r.top_position_share for r in fast.records), 3),
            "max_abs_cos": max(max_abs_cos(fast.vectors), max_abs_cos(reference.vectors)),
            "threads": torch.get_num_threads(),
        },
        TARGETS,
    )


if __name__ == "__main__":
    main()
