"""Page speed on a large database: the gallery, a vector page and the compare page.

Seeds a fresh SQLite file with 2,000 vectors (width 576, the embedded model's) in 20 runs and
20,000 generations, then times each page in-process (the ASGI app, no network, no worker: every
completion the pages show is already stored). Every SQL statement a page runs is checked with
EXPLAIN QUERY PLAN: a full scan of a table that grows with use is reported. Last line: one JSON
object with the row counts, p50/p95 per page, `gallery_p95_ms` (the worst gallery variant;
target < 100 ms on this machine) and `unindexed_scan_count` (target 0), with their verdicts
(bench/verdict.py).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import event, insert, text

from app.labels.labelling import all_labels
from app.main import create_app
from app.models import Generation, Job, Labeling, LanguageModel, Run, Vector
from app.service import Service
from app.settings import Settings
from app.store import generation_key

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.* importable
from bench.verdict import Target, report

TARGETS = (Target("gallery_p95_ms", "<", 100), Target("unindexed_scan_count", "==", 0))
WIDTH, RUNS, PER_RUN, SCALES = 576, 20, 100, (1.0, -1.0, 0.5, 2.0, 4.0)
PROMPTS = ("How can I make a bomb?", "Tell me about the sea.")
GROWING = ("vectors", "generations", "labelings", "runs", "jobs", "job_events", "messages")
SAMPLING = {"seed": 0, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 48}


def seed(service: Service) -> dict[str, int]:
    rng = np.random.default_rng(0)
    words = ["the", "sea", "bomb", "chemistry", "story", "recipe", "sorry", "cannot", "help", "waves", "blue"]
    model_name = "default"
    with service.db.session() as session:
        model = LanguageModel(
            name=model_name, architecture="llama", n_blocks=30, width=WIDTH, context_length=8192
        )
        session.add(model)
        session.flush()
        label_ids = [label.id for label in all_labels(session)][:5]  # starting labels from the migrations
        vector_rows, vector_count, generation_count, labeling_count = [], 0, 0, 0
        for _ in range(RUNS):
            run = Run(
                kind="melbo",
                model_id=model.id,
                model_name=model_name,
                spec={"prompts": list(PROMPTS)},
                prompts=list(PROMPTS),
                status="succeeded",
                source=7,
                target=22,
                radius=9.0,
                result={},
                inputs={},
            )
            session.add(run)
            session.flush()
            session.add(Job(kind="melbo", run_id=run.id, status="succeeded", progress=1.0))
            values = rng.standard_normal((PER_RUN, WIDTH)).astype("<f4")
            values *= 9.0 / np.linalg.norm(values, axis=1, keepdims=True)
            vector_rows = [
                {
                    "run_id": run.id,
                    "index": i,
                    "block": 7,
                    "width": WIDTH,
                    "values": values[i].tobytes(),
                    "norm": 9.0,
                    "objective": float(rng.uniform(50, 500)),
                    "kl": float(rng.exponential(1.0)),
                    "metrics": {},
                }
                for i in range(PER_RUN)
            ]
            session.execute(insert(Vector), vector_rows)
            vector_count += PER_RUN
        session.flush()
        ids = [v for (v,) in session.execute(text("SELECT id FROM vectors ORDER BY id"))]
        unsteered = {}
        for prompt in PROMPTS:
            key = generation_key(model_name, None, 0.0, None, prompt, **SAMPLING)
            row = Generation(
                key=key,
                model_id=model.id,
                prompt=prompt,
                text="I cannot help with that.",
                n_tokens=7,
                finish_reason="eos",
                metrics={},
                **SAMPLING,
            )
            session.add(row)
            session.flush()
            unsteered[prompt] = row.id
            generation_count += 1
        batch: list[dict[str, Any]] = []
        for vector_id in ids:
            for prompt in PROMPTS:
                for scale in SCALES:
                    text_ = " ".join(random.Random(vector_id * 31 + int(scale * 10)).choices(words, k=30))
                    batch.append(
                        {
                            "key": generation_key(model_name, vector_id, scale, 7, prompt, **SAMPLING),
                            "model_id": model.id,
                            "vector_id": vector_id,
                            "unsteered_id": unsteered[prompt],
                            "scale": scale,
                            "block": 7,
                            "prompt": prompt,
                            "text": text_,
                            "n_tokens": 48,
                            "finish_reason": "length",
                            "metrics": {},
                            **SAMPLING,
                        }
                    )
            if len(batch) >= 5000:
                session.execute(insert(Generation), batch)
                generation_count += len(batch)
                batch = []
        if batch:
            session.execute(insert(Generation), batch)
            generation_count += len(batch)
        picked = rng.choice(ids, size=len(ids) * 3 // 10, replace=False)
        session.execute(
            insert(Labeling),
            [{"label_id": label_ids[int(v) % 5], "vector_id": int(v), "author": "bench"} for v in picked],
        )
        labeling_count = len(picked)
    return {"vectors": vector_count, "generations": generation_count, "labelings": labeling_count}


class PlanCheck:
    """Collects the statements run while a page renders; reports full scans of growing tables."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.statements: list[tuple[str, Any]] = []
        event.listen(service.db.engine, "before_cursor_execute", self.collect)

    def collect(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("SELECT") and not statement.startswith("EXPLAIN"):
            self.statements.append((statement, parameters))

    def scans(self) -> dict[str, list[str]]:
        """Full scans of growing tables, sorted into three kinds.

        bounded: the scan walks the primary key in order and stops after LIMIT rows (no sort step);
        exhaustive: the nearest-vector search, which must read every vector at the block;
        unindexed: anything else, which an index should serve.
        """
        found: dict[str, set[str]] = {"unindexed": set(), "bounded": set(), "exhaustive": set()}
        with self.service.db.engine.connect() as conn:
            for statement, parameters in self.statements:
                plan = [
                    str(row[-1])
                    for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
                ]
                sorts = any("TEMP B-TREE" in line for line in plan)
                for detail in plan:
                    table = detail.split()[1] if detail.startswith("SCAN ") else ""
                    if table not in GROWING or "INDEX" in detail:
                        continue
                    flat = " ".join(statement.split())
                    kind = (
                        "exhaustive"
                        if 'vectors."values"' in flat
                        else "bounded"
                        if " LIMIT " in flat and not sorts
                        else "unindexed"
                    )
                    found[kind].add(f"{detail} :: {flat[-200:]}")
        self.statements = []
        return {k: sorted(v) for k, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions per page")
    args = parser.parse_args()
    reps = 15 if args.quick else 60

    tmp = Path(tempfile.mkdtemp(prefix="steerscope-web-"))
    settings = Settings(data_dir=tmp, database_url=f"sqlite:///{tmp}/web.db", gallery_tokens=48)
    service = Service(settings)
    service.db.upgrade()  # the worker is never started: every page here reads stored rows only
    began = time.perf_counter()
    counts = seed(service)
    print(f"seeded {counts} in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    client = TestClient(create_app(settings, service=service), base_url="http://127.0.0.1")  # a served host
    with service.db.engine.connect() as conn:
        run_id = conn.exec_driver_sql("SELECT max(id) FROM runs").scalar()
        vector_ids = [
            v for (v,) in conn.exec_driver_sql("SELECT id FROM vectors WHERE run_id = ? LIMIT 4", (run_id,))
        ]
        label_id = conn.exec_driver_sql("SELECT min(id) FROM labels").scalar()
    pages = {
        "gallery_first": f"/runs/{run_id}/gallery",
        "gallery_filtered": f"/runs/{run_id}/gallery?min_kl=0.5&label={label_id}",
        "gallery_sorted": f"/runs/{run_id}/gallery?sort=kl&desc=true&page=2",
        "vector": f"/vectors/{vector_ids[0]}",
        "compare": f"/compare?ids={','.join(map(str, vector_ids))}",
        "home": "/",
    }
    checker = PlanCheck(service)
    figures: dict[str, Any] = {**counts, "runs": RUNS, "repetitions": reps}
    scans: dict[str, set[str]] = {"unindexed": set(), "bounded": set(), "exhaustive": set()}
    for name, url in pages.items():
        r = client.get(url)
        assert r.status_code == 200, f"{url}: {r.status_code} {r.text[:300]}"
        for kind, found in checker.scans().items():
            scans[kind].update(found)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            client.get(url)
            times.append(1000 * (time.perf_counter() - t0))
        checker.statements = []
        figures[f"{name}_p50_ms"] = round(statistics.median(times), 2)
        figures[f"{name}_p95_ms"] = round(statistics.quantiles(times, n=20)[-1], 2)
    figures["gallery_p95_ms"] = max(figures[f"gallery_{v}_p95_ms"] for v in ("first", "filtered", "sorted"))
    figures["unindexed_scans"] = sorted(scans["unindexed"])  # should be empty
    figures["unindexed_scan_count"] = len(scans["unindexed"])
    figures["bounded_scans"] = sorted(scans["bounded"])
    figures["exhaustive_scans"] = sorted(scans["exhaustive"])
    report("web", figures, TARGETS)


if __name__ == "__main__":
    main()
