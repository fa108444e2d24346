"""Scale-out: one sweep (8 runs of 8 vectors on the embedded model: 4 cells, each learned run with
its random twin) on the default local worker (one process, every core), on 1 Ray actor and on 2,
in one process; each actor has one torch thread on a private local cluster.

The sweep is seeded, so where it runs must not change what it finds: the 2 actors must give the
1 actor's vectors bit for bit (both train with one thread, the same operations in the same order),
and the local worker, whose thread count differs, the same median learned objective within 5%.

Last line (bench/verdict.py): `scale_speedup` (1-actor time over 2-actor time; target >= 1.6 on a
2-core machine), `speedup_vs_local` (the local worker's time over 2 actors'), `vectors_equal`,
`objective_ratio` (median learned objective, 2 actors over 1) and `objective_ratio_local` (local
over 1 actor), with their verdicts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout

from sqlalchemy import select  # noqa: E402

from app import schemas  # noqa: E402
from app.models import Vector  # noqa: E402
from app.service import Service  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.sweeps import grids  # noqa: E402
from bench.verdict import Target, report  # noqa: E402

TARGETS = (
    Target("scale_speedup", ">=", 1.6),
    Target("vectors_equal", "==", True),
    Target("objective_ratio", ">=", 0.95, name="objective_ratio_low"),
    Target("objective_ratio", "<=", 1.05, name="objective_ratio_high"),
    Target("objective_ratio_local", ">=", 0.95, name="objective_ratio_local_low"),
    Target("objective_ratio_local", "<=", 1.05, name="objective_ratio_local_high"),
)


def settings_for(executor: str, actors: int, args: argparse.Namespace) -> Settings:
    database = Path(tempfile.mkdtemp(prefix=f"steerscope-scale-{executor}{actors}-")) / "scale.db"
    common: dict[str, Any] = dict(
        data_dir=ROOT / "data",  # where the embedded model is converted once, shared by every worker
        database_url=f"sqlite:///{database}",
        default_model=args.model,
        gallery_tokens=args.tokens,
        heartbeat_s=0.5,
        auto_score=False,  # the sweep's training and galleries are what is timed
    )
    if executor == "local":
        return Settings(**common, executor="local", worker_threads=0)  # the default: torch's threads
    return Settings(**common, executor="ray", ray_actors=actors, ray_cpus_per_actor=1, worker_threads=1)


def ready(service: Service, executor: str, actors: int) -> bool:
    if executor == "local":
        return service.executor.pid is not None  # type: ignore[attr-defined]
    return sum(r["pid"] is not None for r in service.executor.runners()) >= actors  # type: ignore[attr-defined]


def run_sweep(
    executor: str, actors: int, body: schemas.SweepCreate, args: argparse.Namespace
) -> dict[str, Any]:
    """Start a fresh service on this executor, run the sweep, time it, read back its vectors."""
    service = Service(settings_for(executor, actors, args))
    service.start()
    try:
        deadline = time.monotonic() + 600
        while not ready(service, executor, actors):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {executor} workers did not start")
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
        cells = [cell for table in grid["tables"] for row in table["rows"] for cell in row["cells"]]
        failed = [c for c in cells for side in ("learned", "random") if c[side]["status"] != "succeeded"]
        if failed:
            raise RuntimeError(f"{len(failed)} runs did not succeed")
        vectors: dict[tuple[int, str], np.ndarray] = {}  # (cell, side) -> [n, d]
        with service.db.session() as session:
            for i, cell in enumerate(cells):
                for side in ("learned", "random"):
                    rows = session.scalars(
                        select(Vector).where(Vector.run_id == cell[side]["run_id"]).order_by(Vector.index)
                    ).all()
                    vectors[(i, side)] = np.stack([np.frombuffer(v.values, dtype="<f4") for v in rows])
    finally:
        service.stop()
    return {
        "seconds": seconds,
        "objectives": [c["learned"]["objective"] for c in cells],
        "kl_ratios": [c["kl_ratio"] for c in cells],
        "runners": len({c[side]["runner"] for c in cells for side in ("learned", "random")}),
        "vectors": vectors,
    }


def largest_difference(a: dict[tuple[int, str], np.ndarray], b: dict[tuple[int, str], np.ndarray]) -> float:
    """Largest |difference| between the same vector in two sweeps (inf if their shapes differ)."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


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

    print("local worker ...", file=sys.stderr, flush=True)
    local = run_sweep("local", 1, body, args)
    print(f"  {local['seconds']:.1f} s", file=sys.stderr, flush=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        print("1 actor ...", file=sys.stderr, flush=True)
        one = run_sweep("ray", 1, body, args)
        print(f"  {one['seconds']:.1f} s; 2 actors ...", file=sys.stderr, flush=True)
        two = run_sweep("ray", 2, body, args)
        print(f"  {two['seconds']:.1f} s", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    one_median = statistics.median(one["objectives"])
    figures = {
        "runs": 8,
        "vectors_per_run": 8,
        "local_s": round(local["seconds"], 1),
        "one_actor_s": round(one["seconds"], 1),
        "two_actors_s": round(two["seconds"], 1),
        "actors_used": two["runners"],
        "scale_speedup": round(one["seconds"] / two["seconds"], 3),
        "speedup_vs_local": round(local["seconds"] / two["seconds"], 3),
        "vectors_max_abs_diff": largest_difference(one["vectors"], two["vectors"]),
        "vectors_max_abs_diff_local": largest_difference(one["vectors"], local["vectors"]),
        "objective_ratio": round(statistics.median(two["objectives"]) / one_median, 4),
        "objective_ratio_local": round(statistics.median(local["objectives"]) / one_median, 4),
        "kl_ratio_learned_over_random": [round(r, 2) if r is not None else None for r in two["kl_ratios"]],
    }
    figures["vectors_equal"] = figures["vectors_max_abs_diff"] == 0.0
    report("scale", figures, TARGETS)


if __name__ == "__main__":
    main()
