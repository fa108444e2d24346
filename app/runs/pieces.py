"""What a kind's own piece of the run page needs (the kinds table names each kind's piece)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.kinds import Kind
from app.models import Run, Vector

COMPOSE_CHOICES = (2, 4, 8, 16, 32)  # n offered by a chain's composition test


def chain(session: Session, run: Run) -> dict[str, Any]:
    """A chain's θ₀ and the compositions made from it so far."""
    compositions = session.scalars(
        select(Run)
        .where(Run.kind == Kind.COMPOSE, Run.inputs["chain_run"].as_integer() == run.id)
        .order_by(Run.id)
    ).all()
    return {
        "parent": session.get(Vector, run.parent_vector_id) if run.parent_vector_id else None,
        "compositions": compositions,
        "choices": COMPOSE_CHOICES,
    }
