"""The JSON API of discovery: a run's behaviours, labels applied to a behaviour's members, the
discovery curve, scoring on request, and detectors (defining one, running one over a run)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from app import store
from app.deps import AuthorCookie, ServiceDep, SessionDep
from app.discovery import detectors, findings
from app.errors import Invalid, NotFound
from app.executor.protocol import Render
from app.fields import Whole
from app.labels import labelling
from app.models import Behaviour, Generation, Vector
from app.responses import (
    BehaviourLabelled,
    BehaviourOut,
    DetectorOut,
    DetectorRun,
    DiscoveryOut,
    Exemplar,
    JobOut,
    ScoringQueued,
)

router = APIRouter(prefix="/api")


def behaviour_out(b: Behaviour, exemplar: Generation | None) -> BehaviourOut:
    return BehaviourOut(
        id=b.id,
        run_id=b.run_id,
        index=b.index,
        kind=b.kind,
        name=b.name,
        subtitle=b.subtitle,
        trait=b.trait,
        words=list(b.words),
        size=b.size,
        n_vectors=b.n_vectors,
        n_random=b.n_random,
        exemplar=None
        if exemplar is None
        else Exemplar(
            generation_id=exemplar.id,
            vector_id=exemplar.vector_id,
            prompt=exemplar.prompt,
            text=exemplar.text,
        ),
    )


@router.get("/runs/{run_id}/behaviours", tags=["behaviours"], summary="A run's behaviours, biggest first")
def list_behaviours(run_id: Whole, session: SessionDep) -> list[BehaviourOut]:
    found = findings.behaviours_of(session, store.get_run(session, run_id).id)
    examples = findings.exemplars(session, found)
    return [behaviour_out(b, examples.get(b.exemplar_id or -1)) for b in found]


@router.get("/runs/{run_id}/discovery", tags=["behaviours"], summary="Distinct behaviours vs vectors tried")
def discovery(run_id: Whole, session: SessionDep) -> DiscoveryOut:
    """The discovery curve: behaviours (clusters) shown by the first k learned and random vectors."""
    run = store.get_run(session, run_id)
    curve = run.result.get("discovery") or {"learned": [], "random": []}
    return DiscoveryOut(run_id=run.id, learned=curve.get("learned", []), random=curve.get("random", []))


def queue_score(service: Any, run_id: int) -> ScoringQueued:
    with service.db.session() as session:
        job = findings.queue_scoring(session, store.get_run(session, run_id))
        out = ScoringQueued(job=JobOut.model_validate(job), run_id=run_id, scoring_run_id=job.run_id)
    service.notify()
    return out


@router.post(
    "/runs/{run_id}/score",
    tags=["behaviours"],
    status_code=201,
    summary="Score, cluster and rank a run's gallery (and its random twin's) now",
)
def score_run(run_id: Whole, service: ServiceDep) -> ScoringQueued:
    """Queues a scoring job (or answers with the one already waiting). Learned runs are scored by
    themselves once they and their twin finish; this scores again, e.g. after more samples."""
    return queue_score(service, run_id)


class BehaviourLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label_id: Whole


@router.post("/behaviours/{behaviour_id}/label", tags=["behaviours"], summary="Label every member")
def label_behaviour(
    behaviour_id: Whole, body: BehaviourLabel, service: ServiceDep, author: AuthorCookie = None
) -> BehaviourLabelled:
    """Put the label on the run's vectors this is the main behaviour of and on each of the run's
    completions in it (the random twin's members stay unlabelled: they are the baseline)."""
    name = labelling.author_of(author)
    with service.db.session() as session:
        behaviour = session.get(Behaviour, behaviour_id)
        if behaviour is None:
            raise NotFound(f"no behaviour {behaviour_id}")
        vectors = session.scalars(
            select(Vector.id).where(Vector.behaviour_id == behaviour.id, Vector.run_id == behaviour.run_id)
        ).all()
        generations = session.scalars(
            select(Generation.id)
            .join(Vector, Generation.vector_id == Vector.id)
            .where(Generation.behaviour_id == behaviour.id, Vector.run_id == behaviour.run_id)
        ).all()
        for vid in vectors:
            labelling.toggle(session, labelling.Toggle(label_id=body.label_id, vector_id=vid, on=True), name)
        for gid in generations:
            labelling.toggle(
                session, labelling.Toggle(label_id=body.label_id, generation_id=gid, on=True), name
            )
    return BehaviourLabelled(
        behaviour_id=behaviour_id, label_id=body.label_id, vectors=len(vectors), generations=len(generations)
    )


def detector_out(d: Any) -> DetectorOut:
    return DetectorOut.model_validate(d)


@router.get("/detectors", tags=["detectors"], summary="Defined detectors")
def list_detectors(session: SessionDep) -> list[DetectorOut]:
    return [detector_out(d) for d in detectors.all_detectors(session)]


@router.post("/detectors", tags=["detectors"], summary="Define a detector", status_code=201)
def create_detector(body: detectors.DetectorEdit, service: ServiceDep) -> DetectorOut:
    with service.db.session() as session:
        return detector_out(detectors.save(session, body))


@router.post(
    "/detectors/{detector_id}/runs/{run_id}", tags=["detectors"], summary="Score a run's completions"
)
def run_detector(detector_id: Whole, run_id: Whole, service: ServiceDep) -> DetectorRun:
    """A regex is answered at once; a judge question becomes a job for the worker (its model is
    checked first, so a model the worker cannot load is refused here)."""
    with service.db.session() as session:
        detector = detectors.get(session, detector_id)
        run = store.get_run(session, run_id)
        kind, pattern = detector.kind, detector.pattern
        judge_model = detector.judge_model or run.model_name
        texts = detectors.run_texts(session, run_id)
    if kind == "judge":
        if not texts:
            raise Invalid(f"run {run_id} has no steered completions to judge")
        info = service.ask(Render(model=judge_model, prompts=[]))
        with service.db.session() as session:
            model = store.upsert_model(session, info["model"])
            job = detectors.queue_judging(
                session, detectors.get(session, detector_id), store.get_run(session, run_id), model
            )
            out = DetectorRun(
                detector_id=detector_id, run_id=run_id, scored=None, job=JobOut.model_validate(job)
            )
        service.notify()
        return out
    rows = detectors.regex_scores(pattern, texts)
    with service.db.session() as session:
        stored = detectors.store_scores(session, detector_id, rows)
    return DetectorRun(detector_id=detector_id, run_id=run_id, scored=stored, job=None)
