"""Refining a vector over JSON: start a scale sweep, read one back, list a vector's sweeps."""

from __future__ import annotations

from fastapi import APIRouter

from app import launch, refine, schemas, store
from app.deps import ServiceDep, SessionDep
from app.fields import Whole
from app.refine_responses import ScaleSweepOut
from app.responses import Created, JobOut

router = APIRouter(prefix="/api", tags=["refine"])


@router.post(
    "/vectors/{vector_id}/scale-sweep",
    status_code=201,
    summary="Sweep a vector's scale: effect, fluency and KL at each, where it changes and where it breaks",
)
def create_scale_sweep(vector_id: Whole, body: schemas.ScaleSweepCreate, service: ServiceDep) -> Created:
    job = launch.start_scale_sweep(service, vector_id, body)
    return Created(job=JobOut.model_validate(job), run_id=job.run_id)


@router.get("/vectors/{vector_id}/scale-sweeps", summary="A vector's scale sweeps, newest first")
def list_scale_sweeps(vector_id: Whole, session: SessionDep) -> list[ScaleSweepOut]:
    store.get_vector(session, vector_id)
    return [
        ScaleSweepOut.model_validate(refine.summary(session, r)) for r in refine.sweeps_of(session, vector_id)
    ]


@router.get(
    "/runs/{run_id}/scale-sweep", summary="A scale sweep: its figures per scale, markers and completions"
)
def read_scale_sweep(run_id: Whole, session: SessionDep) -> ScaleSweepOut:
    return ScaleSweepOut.model_validate(refine.summary(session, refine.get(session, run_id)))
