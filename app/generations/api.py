"""Generations: stored ones, and one made on request (streamed or not)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from app import schemas
from app.deps import ServiceDep, SessionDep
from app.fields import Whole
from app.generations import sampling
from app.models import Generation, Vector
from app.responses import GeneratedPair, GenerationOut

router = APIRouter(prefix="/api", tags=["generations"])


@router.get("/generations", summary="Stored generations, filtered by vector or run")
def list_generations(
    session: SessionDep,
    vector_id: Whole | None = None,
    run_id: Whole | None = None,
    limit: Annotated[Whole, Query(ge=1, le=1000)] = 100,
    offset: Whole = 0,
) -> list[GenerationOut]:
    query = select(Generation).order_by(Generation.id).limit(limit).offset(offset)
    if vector_id is not None:
        query = query.where(Generation.vector_id == vector_id)
    if run_id is not None:
        query = query.join(Vector, Generation.vector_id == Vector.id).where(Vector.run_id == run_id)
    return [GenerationOut.model_validate(g) for g in session.scalars(query).all()]


@router.post(
    "/generations",
    summary="Generate now (between training steps): steered and unsteered, answered from the table if stored",
    response_model=GeneratedPair,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "With stream=true: an SSE stream."}
    },
)
def create_generation(body: schemas.GenerationCreate, service: ServiceDep) -> Any:
    if body.stream:
        return StreamingResponse(
            sampling.generate_stream(service, sampling.plan(service, body)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    return sampling.generate_now(service, body)
