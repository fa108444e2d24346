"""Starting work: MELBO runs (and random baselines), chains, calibrations, generation jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from app import launch, schemas, store
from app.deps import ServiceDep, SessionDep
from app.fields import Whole
from app.models import Run, Vector

router = APIRouter(prefix="/api", tags=["runs"])


def _created(job: Any) -> dict[str, Any]:
    return {"job": schemas.job_out(job), "run_id": job.run_id}


@router.post("/runs", status_code=201, summary="Train MELBO vectors (or a random baseline)")
def create_run(body: schemas.MelboCreate, service: ServiceDep) -> dict[str, Any]:
    return _created(launch.start_melbo(service, body))


@router.post("/chains", status_code=201, summary="Grow an orthogonal chain from a stored vector")
def create_chain(body: schemas.ChainCreate, service: ServiceDep) -> dict[str, Any]:
    return _created(launch.start_chain(service, body))


@router.post("/calibrations", status_code=201, summary="Calibrate R for a model, prompts and blocks")
def create_calibration(body: schemas.CalibrationCreate, service: ServiceDep) -> dict[str, Any]:
    return _created(launch.start_calibration(service, body))


@router.post(
    "/sample-jobs", status_code=201, summary="Generate completions of stored vectors at given scales"
)
def create_samples(body: schemas.SamplesCreate, service: ServiceDep) -> dict[str, Any]:
    return _created(launch.start_samples(service, body))


@router.get("/runs", summary="Runs, newest first")
def list_runs(
    session: SessionDep, limit: Annotated[Whole, Query(ge=1, le=500)] = 50, offset: Whole = 0
) -> list[dict[str, Any]]:
    runs = session.scalars(select(Run).order_by(Run.id.desc()).limit(limit).offset(offset)).all()
    return [schemas.run_out(r) for r in runs]


@router.get("/runs/{run_id}")
def read_run(run_id: Whole, session: SessionDep) -> dict[str, Any]:
    return schemas.run_out(store.get_run(session, run_id))


@router.get("/runs/{run_id}/vectors", summary="A run's vectors in index order")
def run_vectors(run_id: Whole, session: SessionDep, values: bool = False) -> list[dict[str, Any]]:
    read_run(run_id, session)
    vectors = session.scalars(select(Vector).where(Vector.run_id == run_id).order_by(Vector.index)).all()
    return [schemas.vector_out(v, values=values) for v in vectors]


@router.get("/vectors/{vector_id}")
def read_vector(vector_id: Whole, session: SessionDep, values: bool = False) -> dict[str, Any]:
    return schemas.vector_out(store.get_vector(session, vector_id), values=values)
