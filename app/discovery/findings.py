"""What scoring found, stored: scores and flags on generations, a run's behaviours, its vectors'
interest and interesting-first rank, and the discovery curve (in the run's result).

The worker scores a run's gallery completions together with its random twin's (engine/discovery/findings.py)
and names generations and vectors by id; this module builds what it is sent and stores the answer.
Scoring is a job of its own (a `score` run, `inputs.for_run` naming the run it scores): queued by
itself when a learned run and its twin have finished, or on request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, aliased

from app import kinds
from app.errors import Invalid
from app.kinds import Kind
from app.models import Behaviour, Generation, Job, LanguageModel, Run, Vector
from app.runs.scales import SCORED_UP_TO
from app.store import create_run, get_run

FLAG_LABELS = ("unchanged", "rephrase", "gibberish")  # flags that have a label of the same name
LIVE = ("queued", "running")


def twin_of(session: Session, run: Run) -> Run | None:
    """The random run trained at the same R and prompts as this learned run, if any."""
    return session.scalars(select(Run).where(Run.twin_of == run.id).order_by(Run.id.desc())).first()


def completions(session: Session, run: Run) -> list[dict[str, Any]]:
    """The run's (and its twin's) greedy gallery completions, each vector's at the scale scoring reads
    (app/runs/scales.py `scored_scale`: its working scale, at most x1; x1 when it has
    none), beside their unsteered partners."""
    runs = [run.id]
    twin = twin_of(session, run)
    if twin is not None:
        runs.append(twin.id)
    partner = aliased(Generation)
    rows = session.execute(
        select(Generation, Vector.run_id, partner.text)
        .join(Vector, Generation.vector_id == Vector.id)
        .join(partner, Generation.unsteered_id == partner.id)
        .where(
            Vector.run_id.in_(runs),
            Generation.scale == func.min(func.coalesce(Vector.working_scale, 1.0), SCORED_UP_TO),
            Generation.temperature == 0.0,
            Generation.prompt.in_(list(run.prompts)),
        )
        .order_by(Vector.run_id, Vector.index, Generation.id)
    ).all()
    return [
        {
            "generation_id": g.id,
            "vector_id": g.vector_id,
            "prompt": g.prompt,
            "text": g.text,
            "unsteered": unsteered,
            "random": run_id != run.id,
            "scale": g.scale,
        }
        for g, run_id, unsteered in rows
    ]


def scored_rows(session: Session, run: Run) -> dict[str, Any]:
    """What a scoring job's order carries: the completions as they are now, the twin's included."""
    return {"rows": completions(session, get_run(session, int(run.inputs["for_run"])))}


def scoring_job(session: Session, run: Run) -> Job | None:
    """The queued or running job that scores this run, if any."""
    return session.scalars(
        select(Job)
        .join(Run, Job.run_id == Run.id)
        .where(Run.kind == Kind.SCORE, Run.inputs["for_run"].as_integer() == run.id, Job.status.in_(LIVE))
        .order_by(Job.id)
        .limit(1)
    ).first()


def queue_scoring(session: Session, run: Run, *, priority: int = 0, owner: str = "") -> Job:
    """A job scoring the run's gallery (and its twin's); the one already waiting if there is one.
    Refused, writing nothing, when the run has nothing to score."""
    if kinds.of(run.kind).scoring == "never":
        raise Invalid(f"run {run.id} is a {run.kind} run: it has no gallery of its own to score")
    pending = scoring_job(session, run)
    if pending is not None:
        return pending
    if not completions(session, run):
        raise Invalid(f"run {run.id} has no greedy gallery samples beside unsteered ones to score")
    model = session.get(LanguageModel, run.model_id) if run.model_id is not None else None
    if model is None:
        raise Invalid(f"run {run.id} has not been started on a model yet")
    spec = {"model": run.model_name, "prompts": list(run.prompts), "run_id": run.id}
    return create_run(
        session,
        kind=Kind.SCORE,
        spec=spec,
        model=model,
        inputs={"for_run": run.id},
        priority=priority,
        owner=owner,
    )


def score_when_done(session: Session, finished: Run) -> Job | None:
    """After a run's job ends: queue the scoring of the learned run it completes, once the learned
    run succeeded and its random twin (if it has one) is no longer queued or running."""
    learned = session.get(Run, finished.twin_of) if finished.twin_of is not None else finished
    if learned is None or kinds.of(learned.kind).scoring != "auto" or learned.status != "succeeded":
        return None
    twin = twin_of(session, learned)
    if twin is not None and twin.status in LIVE:
        return None
    own = session.scalars(select(Job).where(Job.run_id == learned.id).order_by(Job.id.desc())).first()
    try:
        return queue_scoring(session, learned, priority=own.priority if own else 0)
    except Invalid:
        return None  # nothing to score (no prompts, no vectors): not a fault of anyone's


def store(session: Session, run: Run, found: dict[str, Any]) -> list[Behaviour]:
    """Replace the run's findings with these (scores, behaviours, ranks, curve)."""
    session.execute(delete(Behaviour).where(Behaviour.run_id == run.id))
    session.flush()
    behaviours: dict[int, Behaviour] = {}
    for row in found["behaviours"]:
        b = Behaviour(
            run_id=run.id,
            index=int(row["index"]),
            kind=str(row["kind"]),
            name=str(row["name"])[:200],
            words=list(row["words"]),
            exemplar_id=row.get("exemplar"),
            size=int(row["size"]),
            n_vectors=int(row["n_vectors"]),
            n_random=int(row["n_random"]),
            subtitle=str(row.get("subtitle", ""))[:300],
            trait=str(row.get("trait", ""))[:100],
        )
        session.add(b)
        behaviours[b.index] = b
    session.flush()
    for s in found["scores"]:
        member = behaviours.get(s["behaviour"])
        session.execute(
            update(Generation)
            .where(Generation.id == int(s["generation_id"]))
            .values(
                effect=s["effect"],
                fluency=s["fluency"],
                repetition=s["repetition"],
                beyond_random=s["beyond_random"],
                interest=s["interest"],
                flag=s["flag"],
                changes=[c for c in s.get("changes", []) if isinstance(c, dict)],
                embedding=s.get("embedding"),
                behaviour_id=member.id if member is not None else None,
            )
        )
    for v in found["vectors"]:
        main = behaviours.get(v["behaviour"]) if v.get("behaviour") is not None else None
        session.execute(
            update(Vector)
            .where(Vector.id == int(v["vector_id"]))
            .values(
                interest=v["interest"], rank=v["rank"], behaviour_id=main.id if main is not None else None
            )
        )
    run.result = {**run.result, "discovery": found["curve"], "scored": len(found["scores"])}
    session.flush()
    return sorted(behaviours.values(), key=lambda b: b.index)


def behaviours_of(session: Session, run_id: int) -> list[Behaviour]:
    return list(
        session.scalars(select(Behaviour).where(Behaviour.run_id == run_id).order_by(Behaviour.index))
    )


def exemplars(session: Session, behaviours: Sequence[Behaviour]) -> dict[int, Generation]:
    ids = [b.exemplar_id for b in behaviours if b.exemplar_id is not None]
    return {g.id: g for g in session.scalars(select(Generation).where(Generation.id.in_(ids)))}


def suggestion(flags: Sequence[str]) -> str:
    """The flag a vector's completions mostly carry (more than half), offered as its label; "" if none."""
    for name in FLAG_LABELS:
        if sum(f == name for f in flags) * 2 > len(flags):
            return name
    return ""
