"""Refining a vector into new vectors over JSON: start an R-path, a generalization or a search; read
one back; list a vector's refinements."""

from __future__ import annotations

from fastapi import APIRouter

from app import schemas, store
from app.deps import ServiceDep, SessionDep
from app.fields import Whole
from app.kinds import Kind
from app.models import Job
from app.refine import refinements
from app.refine.responses import GeneralizeOut, RPathOut, SearchOut
from app.responses import Created, JobOut, RunOut
from app.runs import launch

router = APIRouter(prefix="/api", tags=["refine"])


def _created(job: Job) -> Created:
    out = JobOut.model_validate(job)
    return Created(job=out, run_id=out.run_id)


@router.post(
    "/vectors/{vector_id}/rpath",
    status_code=201,
    summary="Train a vector again from itself at several multiples of its norm: how its direction turns",
)
def create_rpath(vector_id: Whole, body: schemas.RPathCreate, service: ServiceDep) -> Created:
    return _created(launch.start_rpath(service, vector_id, body))


@router.post(
    "/vectors/{vector_id}/generalize",
    status_code=201,
    summary="Train a vector further on more prompts, then compare it before and after on held-out ones",
)
def create_generalize(vector_id: Whole, body: schemas.GeneralizeCreate, service: ServiceDep) -> Created:
    return _created(launch.start_generalize(service, vector_id, body))


@router.post(
    "/vectors/{vector_id}/search",
    status_code=201,
    summary="Search around a vector for one whose completions a detector scores higher",
)
def create_search(vector_id: Whole, body: schemas.SearchCreate, service: ServiceDep) -> Created:
    return _created(launch.start_search(service, vector_id, body))


@router.get("/vectors/{vector_id}/refinements", summary="A vector's R-paths, generalizations and searches")
def list_refinements(vector_id: Whole, session: SessionDep) -> list[RunOut]:
    store.get_vector(session, vector_id)
    return [RunOut.model_validate(r) for r in refinements.refinements_of(session, vector_id)]


@router.get("/runs/{run_id}/rpath", summary="An R-path: its points (cosines, objectives) and coordinates")
def read_rpath(run_id: Whole, session: SessionDep) -> RPathOut:
    return RPathOut.model_validate(refinements.rpath(session, refinements.get(session, run_id, Kind.RPATH)))


@router.get("/runs/{run_id}/generalize", summary="A generalization: objectives and held-out comparison")
def read_generalize(run_id: Whole, session: SessionDep) -> GeneralizeOut:
    run = refinements.get(session, run_id, Kind.GENERALIZE)
    return GeneralizeOut.model_validate(refinements.generalize(session, run))


@router.get("/runs/{run_id}/search", summary="A search: score per generation and the best vectors")
def read_search(run_id: Whole, session: SessionDep) -> SearchOut:
    return SearchOut.model_validate(
        refinements.search(session, refinements.get(session, run_id, Kind.SEARCH))
    )
