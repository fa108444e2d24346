"""Runs: starting them (MELBO runs and random baselines, chains, compositions, calibrations,
generation jobs), reading them and their vectors, and the models they run on."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from app import kinds, responses, schemas, store
from app.deps import ServiceDep, SessionDep
from app.fields import Whole
from app.models import LanguageModel, Run, Vector
from app.responses import ComposedOut, Created, ModelOut, RunOut, VectorOut
from app.runs import launch

router = APIRouter(prefix="/api", tags=["runs"])


def _created(job: Any) -> Created:
    return Created(job=responses.JobOut.model_validate(job), run_id=job.run_id)


def _starter(info: kinds.KindInfo) -> Callable[..., Created]:
    """The route that starts a run of this kind from its API body (the kinds table names both)."""
    start = info.launch
    assert start is not None

    def create(body: schemas.Body, service: ServiceDep) -> Created:
        return _created(start(service, body))

    # FastAPI reads the body's type from the signature: the kind's own settings body.
    create.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=info.settings),
            inspect.Parameter("service", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=ServiceDep),
        ],
        return_annotation=Created,
    )
    create.__name__ = f"create_{info.kind}"
    return create


for _info in kinds.table().values():
    if _info.route and _info.launch is not None and _info.settings is not None and not _info.on_vector:
        router.add_api_route(
            f"/{_info.route}",
            _starter(_info),
            methods=["POST"],
            status_code=201,
            summary=_info.about[:1].upper() + _info.about[1:],
        )


@router.post(
    "/compositions",
    status_code=201,
    summary="Compose a chain's first n vectors (their mean × √n) into a vector, and sample it",
)
def create_composition(body: schemas.CompositionCreate, service: ServiceDep) -> ComposedOut:
    composed = launch.start_composition(service, body)
    return ComposedOut(
        run_id=composed.run_id,
        vector_id=composed.vector_id,
        job=responses.JobOut.model_validate(composed.samples),
    )


@router.get("/models")
def list_models(session: SessionDep) -> list[ModelOut]:
    return [
        ModelOut.model_validate(m) for m in session.scalars(select(LanguageModel).order_by(LanguageModel.id))
    ]


@router.get("/runs", summary="Runs, newest first")
def list_runs(
    session: SessionDep, limit: Annotated[Whole, Query(ge=1, le=500)] = 50, offset: Whole = 0
) -> list[RunOut]:
    runs = session.scalars(select(Run).order_by(Run.id.desc()).limit(limit).offset(offset)).all()
    return [RunOut.model_validate(r) for r in runs]


@router.get("/runs/{run_id}")
def read_run(run_id: Whole, session: SessionDep) -> RunOut:
    return RunOut.model_validate(store.get_run(session, run_id))


@router.get(
    "/runs/{run_id}/vectors", summary="A run's vectors in index order", response_model_exclude_unset=True
)
def run_vectors(run_id: Whole, session: SessionDep, values: bool = False) -> list[VectorOut]:
    read_run(run_id, session)
    vectors = session.scalars(select(Vector).where(Vector.run_id == run_id).order_by(Vector.index)).all()
    return [responses.vector(v, values=values) for v in vectors]
