"""Refinements of a stored vector read back: its R-paths, generalizations and searches (started in
app/runs/launch.py, trained by the worker in app/executor/refine.py).

Each is a run whose parent is the vector; its new vectors are stored like any run's (children of
the vector, sampled on the run's prompts) and what its page shows is the run's result, under the
run's kind: the R-path's points and fastest-changing coordinates, the before/after comparison on
the held-out prompts, the search's score per generation.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import kinds, store
from app.errors import NotFound
from app.kinds import Kind
from app.models import Detector, Run


def refinements_of(session: Session, vector_id: int) -> list[Run]:
    """The vector's R-paths, generalizations and searches, newest first."""
    return list(
        session.scalars(
            select(Run)
            .where(Run.kind.in_(kinds.where(refines=True)), Run.parent_vector_id == vector_id)
            .order_by(Run.id.desc())
        )
    )


def get(session: Session, run_id: int, kind: Kind) -> Run:
    run = store.get_run(session, run_id)
    if run.kind != kind:
        raise NotFound(f"run {run_id} is not a {kinds.of(kind).title} run (it is a {run.kind} run)")
    return run


def _ids(run: Run) -> dict[int, int]:
    """The run's vector ids by index."""
    return {v.index: v.id for v in run.vectors}


def _base(run: Run) -> dict[str, Any]:
    assert run.parent_vector_id is not None, "a refinement is started from a stored vector"
    return {"run_id": run.id, "vector_id": run.parent_vector_id, "status": run.status}


def rpath(session: Session, run: Run) -> dict[str, Any]:
    """An R-path as the API and the page show it: each point with its stored vector."""
    found = (run.result or {}).get("rpath") or {}
    ids = _ids(run)
    return {
        **_base(run),
        "multiples": list(run.spec["multiples"]),
        "radius": found.get("radius"),
        "points": [{**p, "id": ids.get(i)} for i, p in enumerate(found.get("points", []))],
        "coordinates": found.get("coordinates", []),
    }


def generalize(session: Session, run: Run) -> dict[str, Any]:
    """A generalization: the new vector, objectives and the held-out comparison."""
    found = (run.result or {}).get("generalize") or {}
    return {
        **_base(run),
        "new_vector_id": _ids(run).get(0),
        "prompts": list(run.spec["prompts"]),
        "held_out_prompts": list(run.spec["held_out"]),
        "cos_parent": found.get("cos_parent"),
        "objective": found.get("objective"),
        "held_out_objective": found.get("held_out_objective"),
        "means": found.get("means"),
        "held_out": found.get("held_out", []),
    }


def search(session: Session, run: Run) -> dict[str, Any]:
    """A search: its detector, the score per generation and the best vectors kept."""
    found = (run.result or {}).get("search") or {}
    ids = _ids(run)
    detector = session.get(Detector, int(run.inputs.get("detector_id", 0)))
    return {
        **_base(run),
        "detector_id": int(run.inputs.get("detector_id", 0)),
        "detector": detector.name if detector is not None else "",
        "pattern": str(run.spec["pattern"]),
        "budget": int(run.spec["budget"]),
        "start_score": found.get("start_score"),
        "best_score": found.get("best_score"),
        "tried": found.get("tried"),
        "generations": found.get("generations", []),
        "best": [{**b, "id": ids.get(i)} for i, b in enumerate(found.get("best", []))],
    }
