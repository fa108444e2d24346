"""Orthogonal chains: the published procedure (reference) against fast mode, from the same θ₀.

    .venv/bin/python bench/chains.py [--quick] [--device cuda --dtype bfloat16]

θ₀ is a MELBO vector at R = 24 (block 7 → hidden_states[22]) on "How can I make a bomb?", or a
fixed-seed random vector of norm 24 where engine.methods.melbo is missing. Both chains train the same
number of vectors (the chain's own stop rules are off so the sets compare). Prints a line per
vector (on stderr), then one JSON object as the last line (bench/verdict.py): seconds per vector
for each mode, the speedup (target ≥ 10), fast median final loss / reference median final loss
(target ≤ 1), norms, KLs and the largest |cos| in each chain (θ₀ included; target ≤ 1e-6).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.* importable
from bench.verdict import Target, report
from engine.methods.chains import ChainConfig, ChainResult, train_chain
from engine.models import LoadedModel, load_model
from engine.specs import ChainSpec
from engine.steer.orthogonal import max_abs_cos

PROMPT = "How can I make a bomb?"
SOURCE, TARGET, RADIUS, SEED = 7, 22, 24.0, 0
TARGETS = (
    Target("speedup", ">=", 10),
    Target("loss_ratio", "<=", 1),
    Target("max_abs_cos", "<=", 1e-6),
)


def make_theta0(lm: LoadedModel) -> tuple[torch.Tensor, str]:
    """A MELBO vector to chain from, or a random one of the same norm without engine.methods.melbo."""
    try:
        from engine.methods.melbo import train_melbo
        from engine.specs import MelboSpec
    except ImportError:
        gen = torch.Generator().manual_seed(SEED)
        v = torch.randn(lm.info.width, generator=gen)
        return v * (RADIUS / v.norm()), "random"
    spec = MelboSpec(
        prompts=(PROMPT,), source=SOURCE, target=TARGET, radius=RADIUS, n_vectors=1, mode="fast", seed=SEED
    )
    return train_melbo(lm, spec).vectors[0].float(), "melbo"


def timed_chain(lm: LoadedModel, theta0: torch.Tensor, mode: str, n: int) -> tuple[ChainResult, float]:
    spec = ChainSpec(prompts=(PROMPT,), source=SOURCE, target=TARGET, n_vectors=n, mode=mode, seed=SEED)  # type: ignore[arg-type]
    began = time.perf_counter()
    result = train_chain(lm, spec, theta0, config=ChainConfig(patience=n + 1))
    seconds = time.perf_counter() - began
    for r in result.records:
        print(
            f"{mode:9s} vector {r.index}: loss {r.loss:8.2f}  norm {r.norm:6.2f}  "
            f"KL {r.kl:.4f}  steps {r.steps}",
            file=sys.stderr,
            flush=True,
        )
    print(f"{mode:9s} {seconds:.1f} s for {len(result.records)} vectors", file=sys.stderr, flush=True)
    return result, seconds


def summary(result: ChainResult, theta0: torch.Tensor, seconds: float) -> dict[str, Any]:
    return {
        "seconds_per_vector": seconds / max(1, len(result.records)),
        "losses": [round(r.loss, 3) for r in result.records],
        "median_loss": statistics.median(r.loss for r in result.records),
        "norms": [round(r.norm, 3) for r in result.records],
        "kls": [round(r.kl, 5) for r in result.records],
        "steps": [r.steps for r in result.records],
        "max_abs_cos": max_abs_cos(torch.cat([theta0[None], result.vectors])),
        "lr": result.settings["lr"],
        "stop_reason": result.stop_reason,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 vectors per chain instead of 4")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16")
    parser.add_argument(
        "--threads", type=int, help="torch threads (1 gives steadier timings on a busy machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 2 if args.quick else 4
    lm = load_model("default", device=args.device, dtype=args.dtype)
    theta0, kind = make_theta0(lm)
    print(f"theta0: {kind}, norm {float(theta0.norm()):.2f}", file=sys.stderr, flush=True)
    ref, ref_s = timed_chain(lm, theta0, "reference", n)
    fast, fast_s = timed_chain(lm, theta0, "fast", n)
    ref_sum, fast_sum = summary(ref, theta0, ref_s), summary(fast, theta0, fast_s)
    out = {
        "quick": args.quick,
        "device": lm.info.device,
        "dtype": lm.info.dtype,
        "threads": torch.get_num_threads(),
        "theta0": kind,
        "theta0_norm": float(theta0.norm()),
        "n_vectors": n,
        "loss_at_zero": ref.loss_at_zero,
        "theta0_kl": ref.theta0_kl,
        "baseline_s": ref_sum["seconds_per_vector"],
        "ours_s": fast_sum["seconds_per_vector"],
        "speedup": ref_sum["seconds_per_vector"] / fast_sum["seconds_per_vector"],
        "loss_ratio": fast_sum["median_loss"] / ref_sum["median_loss"],
        "reference": ref_sum,
        "fast": fast_sum,
        "max_abs_cos": max(ref_sum["max_abs_cos"], fast_sum["max_abs_cos"]),
    }
    report("chains", out, TARGETS)


if __name__ == "__main__":
    main()
