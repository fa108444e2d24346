"""Sweeps over JSON: start a grid of runs (each with its random twin), read the grid back."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from app import schemas
from app.deps import ServiceDep, SessionDep
from app.fields import Whole
from app.models import Sweep
from app.responses import SweepOut, SweepSummary
from app.sweeps import grids

router = APIRouter(prefix="/api/sweeps", tags=["sweeps"])


@router.post(
    "", status_code=201, summary="Train a grid of runs (R × source blocks × prompt sets) with random twins"
)
def create_sweep(body: schemas.SweepCreate, service: ServiceDep) -> SweepOut:
    sweep = grids.start(service, body)
    with service.db.session() as session:
        return SweepOut.model_validate(grids.grid(session, grids.get(session, sweep.id)))


@router.get("", summary="Sweeps, newest first")
def list_sweeps(session: SessionDep) -> list[SweepSummary]:
    rows = session.scalars(select(Sweep).order_by(Sweep.id.desc()).limit(200)).all()
    return [SweepSummary(id=s.id, model=s.model_name, spec=s.spec, created_at=s.created_at) for s in rows]


@router.get("/{sweep_id}", summary="A sweep's grid: learned against random, cell by cell")
def get_sweep(sweep_id: Whole, session: SessionDep) -> SweepOut:
    return SweepOut.model_validate(grids.grid(session, grids.get(session, sweep_id)))
