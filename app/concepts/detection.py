"""A concept as a detector: prompts scored by their largest projection on the concept's direction,
present above its threshold. The worker computes (a quick request); nothing is stored."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app import store
from app.errors import Invalid
from app.executor.protocol import ScoreConcept
from app.fields import MAX_TEXT
from app.kinds import Kind
from app.models import Run
from app.service import Service

MAX_DETECT = 64  # prompts per request


def concepts(session: Any) -> list[Run]:
    """Every concept run, newest first."""
    return list(session.scalars(select(Run).where(Run.kind == Kind.CONCEPT).order_by(Run.id.desc())))


def detect(service: Service, run_id: int, prompts: list[str]) -> dict[str, Any]:
    """Each prompt's score and whether the concept is present in it."""
    prompts = [p for p in prompts if p.strip()]
    if not 1 <= len(prompts) <= MAX_DETECT:
        raise Invalid(f"give between 1 and {MAX_DETECT} prompts, got {len(prompts)}")
    if any(len(p) > MAX_TEXT for p in prompts):
        raise Invalid(f"a prompt is longer than {MAX_TEXT} characters")
    with service.db.session() as session:
        run = store.get_run(session, run_id)
        if run.kind != Kind.CONCEPT:
            raise Invalid(f"run {run_id} is not a concept")
        if not run.vectors or "concept" not in run.result:
            raise Invalid(f"concept {run_id} is not made yet")
        message = ScoreConcept(
            model=run.model_name, vector=run.vectors[0].values, concept=run.result["concept"], prompts=prompts
        )
    found: dict[str, Any] = service.ask(message)
    return found
