"""Models the app knows, and stored generations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from app import sampling, schemas
from app.deps import ServiceDep, SessionDep
from app.fields import Whole
from app.models import Generation, LanguageModel, Vector

router = APIRouter(prefix="/api", tags=["data"])


@router.get("/models")
def list_models(session: SessionDep) -> list[dict[str, Any]]:
    return [
        schemas.model_out(m) for m in session.scalars(select(LanguageModel).order_by(LanguageModel.id)).all()
    ]


@router.get("/generations", summary="Stored generations, filtered by vector or run")
def list_generations(
    session: SessionDep,
    vector_id: Whole | None = None,
    run_id: Whole | None = None,
    limit: Annotated[Whole, Query(ge=1, le=1000)] = 100,
    offset: Whole = 0,
) -> list[dict[str, Any]]:
    query = select(Generation).order_by(Generation.id).limit(limit).offset(offset)
    if vector_id is not None:
        query = query.where(Generation.vector_id == vector_id)
    if run_id is not None:
        query = query.join(Vector, Generation.vector_id == Vector.id).where(Vector.run_id == run_id)
    return [schemas.generation_out(g) for g in session.scalars(query).all()]


@router.post(
    "/generations",
    summary="Generate now (between training steps): steered and unsteered, answered from the table if stored",
    response_model=None,
)
def create_generation(
    body: schemas.GenerationCreate, service: ServiceDep
) -> dict[str, Any] | StreamingResponse:
    if body.stream:
        return StreamingResponse(
            sampling.generate_stream(service, sampling.plan(service, body)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    return sampling.generate_now(service, body)
