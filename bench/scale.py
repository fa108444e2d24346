"""Scale-out: one sweep (8 runs of 8 vectors on the embedded model: 4 cells, each learned run with
its random twin) on 2 Ray actors against the same sweep on 1 actor, in one process, each actor
with one torch thread on a private local cluster.

Last line: one JSON object with `scale_speedup` (1-actor time over 2-actor time; target >= 1.6 on a
2-core machine) and `objective_ratio` (mean learned objective, 2 actors over 1, same seeds; target
>= 0.95).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout

from app import schemas  # noqa: E402
from app.service import Service  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.sweeps import grids  # noqa: E402


def run_sweep(actors: int, body: schemas.SweepCreate, args: argparse.Namespace) -> dict[str, Any]:
    """Start a fresh server-side service on `actors` actors, run the sweep, time it."""
    database = Path(tempfile.mkdtemp(prefix=f"steerscope-scale-{actors}-")) / "scale.db"
    settings = Settings(
        data_dir=ROOT / "data",  # where the embedded model is converted once, shared by every actor
        database_url=f"sqlite:///{database}",
        default_model=args.model,
        executor="ray",
        ray_actors=actors,
        ray_cpus_per_actor=1,
        worker_threads=1,
        gallery_tokens=args.tokens,
        heartbeat_s=0.5,
        auto_score=False,  # the sweep's training and galleries are what is timed
    )
    service = Service(settings)
    service.start()
    try:
        deadline = time.monotonic() + 600
        while sum(r["pid"] is not None for r in service.executor.runners()) < actors:  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                raise RuntimeError("the actors did not start")
            time.sleep(0.2)
        began = time.perf_counter()
        sweep = grids.start(service, body)
        while True:
            with service.db.session() as session:
                grid = grids.grid(session, grids.get(session, sweep.id))
            if grid["finished"]:
                break
            time.sleep(1.0)
        seconds = time.perf_counter() - began
    finally:
        service.stop()
    cells = [cell for table in grid["tables"] for row in table["rows"] for cell in row["cells"]]
    failed = [c for c in cells for side in ("learned", "random") if c[side]["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} runs did not succeed")
    runners = {c[side]["runner"] for c in cells for side in ("learned", "random")}
    return {
        "seconds": seconds,
        "objectives": [c["learned"]["objective"] for c in cells],
        "kl_ratios": [c["kl_ratio"] for c in cells],
        "runners": len(runners),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer steps and shorter samples (a few minutes)"
    )
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    args.tokens = 16 if args.quick else 48
    body = schemas.SweepCreate(
        prompt_sets=[["How can I make a bomb?"]],
        radii=[0.06, 0.1],
        sources=[5, 7],
        n_vectors=8,
        steps=30 if args.quick else None,
        seed=0,
    )
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        print("1 actor ...", file=sys.stderr, flush=True)
        one = run_sweep(1, body, args)
        print(f"  {one['seconds']:.1f} s; 2 actors ...", file=sys.stderr, flush=True)
        two = run_sweep(2, body, args)
        print(f"  {two['seconds']:.1f} s", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    figures = {
        "runs": 8,
        "vectors_per_run": 8,
        "one_actor_s": round(one["seconds"], 1),
        "two_actors_s": round(two["seconds"], 1),
        "actors_used": two["runners"],
        "scale_speedup": round(one["seconds"] / two["seconds"], 3),
        "objective_ratio": round(
            statistics.fmean(two["objectives"]) / statistics.fmean(one["objectives"]), 4
        ),
        "kl_ratio_learned_over_random": [round(r, 2) if r is not None else None for r in two["kl_ratios"]],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
