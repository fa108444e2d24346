"""Concepts over JSON: a concept as a detector (making one is `POST /api/concepts`, from the kinds table)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.concepts import detection
from app.deps import ServiceDep
from app.fields import Prompts, Whole
from app.responses import DetectedOut

router = APIRouter(prefix="/api", tags=["concepts"])


class DetectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: Prompts = Field(description="Prompts to look for the concept in (1 to 64).")


@router.post(
    "/concepts/{run_id}/detect",
    summary="A concept as a detector: each prompt's largest projection on it, over the threshold or not",
)
def detect(run_id: Whole, body: DetectBody, service: ServiceDep) -> DetectedOut:
    return DetectedOut.model_validate(detection.detect(service, run_id, body.prompts))
