"""Sweeps: one request trains a grid of MELBO runs (R values × source blocks × prompt sets), each
beside its random twin at the same R and prompts, spread over every worker; and the grid that
shows, cell by cell, where learned vectors separate from random ones.
"""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import schemas, store
from app.errors import Invalid, NotFound
from app.jobs.machine import FINISHED
from app.kinds import Kind
from app.models import Generation, Job, Run, Sweep, Vector
from app.runs import launch
from app.service import Service

MAX_CELLS = 32  # learned runs per sweep (each has its random twin besides)
MAX_AXIS = 8  # values per axis


def _cells(body: schemas.SweepCreate) -> list[tuple[int, float, int | None]]:
    """(prompt set, R, source) of every cell, in the order the grid shows them."""
    for name, values in (("prompt sets", body.prompt_sets), ("R values", body.radii)):
        if not 1 <= len(values) <= MAX_AXIS:
            raise Invalid(f"give between 1 and {MAX_AXIS} {name}, got {len(values)}")
    sources: list[int | None] = list(body.sources) if body.sources else [None]
    if len(sources) > MAX_AXIS or len(set(sources)) != len(sources):
        raise Invalid(f"give at most {MAX_AXIS} different source blocks")
    if len(set(body.radii)) != len(body.radii):
        raise Invalid("the R values repeat one another")
    bad = [r for r in body.radii if not (math.isfinite(r) and r > 0)]
    if bad:
        raise Invalid(f"every R must be a finite number > 0, got {bad[0]}")
    cells = list(itertools.product(range(len(body.prompt_sets)), body.radii, sources))
    if len(cells) > MAX_CELLS:
        raise Invalid(f"a sweep has at most {MAX_CELLS} cells; this one has {len(cells)}")
    return cells


def start(service: Service, body: schemas.SweepCreate) -> Sweep:
    """Check every cell on a worker, then write the sweep, its runs and their jobs at once."""
    cells = _cells(body)
    model = body.model or service.settings.default_model
    launch.check_limits(service, body.n_vectors, body.steps)
    shared = {"model": model, "n_vectors": body.n_vectors, "seed": body.seed}
    if body.steps is not None:
        shared["steps"] = body.steps
    checked: dict[tuple[int, int | None], dict[str, Any]] = {}
    for p, _, source in cells:  # R does not change what the model accepts: check each place once
        if (p, source) not in checked:
            spec = {
                **shared,
                "prompts": body.prompt_sets[p],
                **({"source": source} if source is not None else {}),
            }
            checked[(p, source)] = service.validate(Kind.MELBO, spec, reserve=service.settings.gallery_tokens)
    with service.db.session() as session:
        info = next(iter(checked.values()))["model"]
        language_model = store.upsert_model(session, info)
        sweep = Sweep(model_name=language_model.name, spec=body.model_dump(exclude={"priority"}))
        session.add(sweep)
        session.flush()
        for p, radius, source in cells:
            spec = dict(checked[(p, source)]["spec"])
            spec["radius" if not body.relative else "radius_fraction"] = radius
            cell = {"prompt_set": p, "radius": radius, "relative": body.relative, "source": source}
            learned = store.create_run(
                session,
                kind=Kind.MELBO,
                spec=spec,
                model=language_model,
                inputs={"cell": cell},
                priority=body.priority,
            )
            twin = store.create_run(
                session,
                kind=Kind.RANDOM,
                spec={**spec, "method": Kind.RANDOM},
                model=language_model,
                inputs={"cell": cell},
                priority=body.priority,
            )
            learned.run.sweep_id = twin.run.sweep_id = sweep.id
        session.flush()
        session.expunge(sweep)
    service.notify()
    return sweep


def get(session: Session, sweep_id: int) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFound(f"no sweep {sweep_id}")
    return sweep


def _side(session: Session, run: Run | None) -> dict[str, Any]:
    """One half of a cell: the run's status, mean objective and KL, and one completion."""
    if run is None:
        return {}
    job = session.scalars(select(Job).where(Job.run_id == run.id).order_by(Job.id.desc())).first()
    vectors = session.scalars(select(Vector).where(Vector.run_id == run.id).order_by(Vector.index)).all()
    objectives = [v.objective for v in vectors if v.objective is not None]
    kls = [v.kl for v in vectors if v.kl is not None]
    sample = None
    if vectors and run.prompts:  # the first vector on the first prompt, greedy, as the gallery has it
        sample = session.scalars(
            select(Generation)
            .where(Generation.vector_id == vectors[0].id, Generation.prompt == run.prompts[0])
            .limit(1)
        ).first()
    return {
        "run_id": run.id,
        "status": job.status if job else run.status,
        "runner": job.runner if job else "",
        "radius": run.radius,
        "source": run.source,
        "vectors": len(vectors),
        "objective": statistics.fmean(objectives) if objectives else None,
        "kl": statistics.fmean(kls) if kls else None,
        "sample": sample.text if sample else None,
        "unsteered_id": sample.unsteered_id if sample else None,
    }


def grid(session: Session, sweep: Sweep) -> dict[str, Any]:
    """The sweep as tables, one per prompt set: rows are R values, columns source blocks."""
    spec = sweep.spec
    sources: list[int | None] = list(spec.get("sources") or [None])
    runs: dict[tuple[int, float, int | None, str], Run] = {}
    for run in sweep.runs:
        cell = run.inputs.get("cell", {})
        runs[(cell.get("prompt_set"), cell.get("radius"), cell.get("source"), run.kind)] = run
    tables = []
    finished = True
    for p, prompts in enumerate(spec["prompt_sets"]):
        rows = []
        for radius in spec["radii"]:
            cells = []
            for source in sources:
                learned = _side(session, runs.get((p, radius, source, Kind.MELBO)))
                random = _side(session, runs.get((p, radius, source, Kind.RANDOM)))
                finished &= all(side.get("status") in FINISHED for side in (learned, random))
                ratio = (
                    learned["kl"] / random["kl"]
                    if learned.get("kl") is not None and random.get("kl")
                    else None
                )
                partner = learned.get("unsteered_id")
                unsteered = session.get(Generation, partner) if partner else None
                cells.append(
                    {
                        "source": source,
                        "learned": learned,
                        "random": random,
                        "kl_ratio": ratio,
                        "unsteered": unsteered.text if unsteered else None,
                    }
                )
            rows.append({"radius": radius, "cells": cells})
        tables.append({"index": p, "prompts": prompts, "rows": rows})
    return {
        "id": sweep.id,
        "model": sweep.model_name,
        "spec": spec,
        "sources": sources,
        "tables": tables,
        "finished": finished,
    }
