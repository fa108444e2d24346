"""A vector's dashboard as the pages and the API read it: what its newest `dashboard` run stored
(engine/discovery/dashboard.py's payload, computed by the worker), and its cosines with the concepts
at its block, computed here from the stored vectors so a concept made later is in them at once.

Nothing here asks the worker: a page reads what is stored and answers fast; a reading is started
only by a POST (app/runs/launch.py `start_dashboard`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.kinds import Kind
from app.models import Job, Run, Vector
from app.vectors import geometry

CHIPS = 5  # promoted tokens shown on a gallery card
LIVE = ("queued", "running")


def runs_of(session: Session, vector_id: int) -> list[Run]:
    """The vector's dashboard runs, newest first."""
    return list(
        session.scalars(
            select(Run)
            .where(Run.kind == Kind.DASHBOARD, Run.parent_vector_id == vector_id)
            .order_by(Run.id.desc())
        )
    )


def stored(session: Session, vector_id: int) -> tuple[Run | None, dict[str, Any] | None]:
    """The newest run that stored a payload, and the payload (None, None: never read)."""
    for run in runs_of(session, vector_id):
        if run.result.get("dashboard"):
            return run, run.result["dashboard"]
    return None, None


def concepts_at(
    session: Session, *, model: str, block: int, width: int | None = None
) -> list[tuple[Run, Vector]]:
    """Every concept of this model at this block (of this width, where given), oldest first."""
    where = [Run.kind == Kind.CONCEPT, Run.model_name == model, Vector.block == block]
    if width is not None:
        where.append(Vector.width == width)
    rows = session.execute(
        select(Run, Vector).join(Vector, Vector.run_id == Run.id).where(*where).order_by(Run.id)
    ).all()
    return [(r, v) for r, v in rows]


def concepts_for_run(session: Session, run: Run) -> list[tuple[str, Vector]]:
    """(name, vector) of the concepts at any block the run's vectors are at: the gallery's choices."""
    blocks = session.scalars(select(Vector.block).where(Vector.run_id == run.id).distinct()).all()
    return [
        (concept_name(r), v)
        for block in sorted(blocks)
        for r, v in concepts_at(session, model=run.model_name, block=block)
    ]


def concept_name(run: Run) -> str:
    return str(run.spec.get("name") or f"concept #{run.id}")


def cosines(session: Session, vector: Vector) -> list[dict[str, Any]]:
    """The vector's cosine with each concept at its block (itself left out), largest in size first."""
    found = [
        (run, other)
        for run, other in concepts_at(
            session, model=vector.run.model_name, block=vector.block, width=vector.width
        )
        if other.id != vector.id
    ]
    if not found:
        return []
    sims = (
        geometry.unit_rows(geometry.stack([o.values for _, o in found]))
        @ geometry.unit_rows(geometry.stack([vector.values]))[0]
    )
    rows = [
        {"name": concept_name(run), "run_id": run.id, "vector_id": other.id, "cosine": round(float(c), 4)}
        for (run, other), c in zip(found, sims, strict=True)
    ]
    return sorted(rows, key=lambda r: -abs(r["cosine"]))


def promoted(payload: dict[str, Any], k: int = CHIPS) -> list[str]:
    """The top promoted tokens: in effect where it was read, else directly."""
    tokens = payload.get("tokens") or {}
    read = tokens.get("effect") or tokens.get("direct") or {}
    return [str(t["text"]) for t in read.get("promoted", [])[:k]]


def chips(session: Session, vector_ids: Sequence[int]) -> dict[int, list[str]]:
    """Each vector's top promoted tokens, for those read already (newest reading wins)."""
    if not vector_ids:
        return {}
    runs = session.scalars(
        select(Run)
        .where(Run.kind == Kind.DASHBOARD, Run.parent_vector_id.in_(list(vector_ids)))
        .order_by(Run.id)
    ).all()
    out: dict[int, list[str]] = {}
    for run in runs:
        if run.parent_vector_id is not None and run.result.get("dashboard"):
            out[run.parent_vector_id] = promoted(run.result["dashboard"])
    return out


def bars(histogram: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The histogram as bars for the page: each bin's edges, counts and heights (share of the tallest)."""
    if not histogram:
        return []
    edges, prompt, answer = histogram["edges"], histogram["prompt"], histogram["answer"]
    tallest = max([p + a for p, a in zip(prompt, answer, strict=True)] + [1])
    return [
        {
            "low": edges[i],
            "high": edges[i + 1],
            "prompt": prompt[i],
            "answer": answer[i],
            "height": (prompt[i] + answer[i]) / tallest,
        }
        for i in range(len(prompt))
    ]


def context(session: Session, vector: Vector) -> dict[str, Any]:
    """What the vector page's dashboard piece shows."""
    runs = runs_of(session, vector.id)
    newest = runs[0] if runs else None
    job = None
    if newest is not None:
        job = session.scalars(select(Job).where(Job.run_id == newest.id).order_by(Job.id.desc())).first()
    run, payload = stored(session, vector.id)
    return {
        "vector": vector,
        "dash_run": run,
        "dash": payload,
        "dash_job": job,
        "dash_live": job is not None and job.status in LIVE,
        "dash_bars": bars(payload.get("histogram") if payload else None),
        "dash_concepts": cosines(session, vector),
    }


def export(session: Session, vector: Vector) -> dict[str, Any] | None:
    """The JSON export: the stored payload with the concept cosines as they are now."""
    run, payload = stored(session, vector.id)
    if run is None or payload is None:
        return None
    return {
        "vector_id": vector.id,
        "run_id": run.id,
        "model": run.model_name,
        "block": payload["block"],
        "norm": payload["norm"],
        "tokens": payload["tokens"],
        "corpus": payload["corpus"],
        "contexts": payload["contexts"],
        "histogram": payload["histogram"],
        "prompts": payload["prompts"],
        "downstream": payload.get("downstream"),  # readings stored before these have none
        "alike": payload.get("alike"),
        "concepts": cosines(session, vector),
    }
