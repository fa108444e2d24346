"""Refining a vector over JSON: start a scale sweep, read one back, list a vector's sweeps."""

from __future__ import annotations

from fastapi import APIRouter

from app import schemas, store
from app.deps import ServiceDep, SessionDep
from app.fields import Whole
from app.refine import scale_sweep
from app.refine.responses import ScaleSweepOut
from app.responses import Created, JobOut
from app.runs import launch

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
        ScaleSweepOut.model_validate(scale_sweep.summary(session, r))
        for r in scale_sweep.sweeps_of(session, vector_id)
    ]


@router.get(
    "/runs/{run_id}/scale-sweep", summary="A scale sweep: its figures per scale, markers and completions"
)
def read_scale_sweep(run_id: Whole, session: SessionDep) -> ScaleSweepOut:
    return ScaleSweepOut.model_validate(scale_sweep.summary(session, scale_sweep.get(session, run_id)))
