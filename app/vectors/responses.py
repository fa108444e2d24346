"""What the API answers about a vector's dashboard (app/vectors/dashboard.py; the payload's parts
are described in docs/discovery.md). Typed like every response (app/responses.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class DashboardOut(BaseModel):
    """A vector's stored dashboard (docs/discovery.md describes each part's rows)."""

    vector_id: int
    run_id: int = Field(description="The dashboard run that read it.")
    model: str
    block: int
    norm: float | None
    tokens: dict[str, Any] = Field(
        description="direct and effect: promoted and suppressed tokens (null: not read)."
    )
    corpus: dict[str, Any] | None = Field(description="What was read: documents, tokens, kinds, the centre.")
    contexts: list[dict[str, Any]] = Field(
        description="Top contexts, one per document, tokens with projections."
    )
    histogram: dict[str, Any] | None = Field(description="Projections of every corpus token: edges, counts.")
    prompts: list[dict[str, Any]] = Field(description="The prompts that come closest (trigger candidates).")
    downstream: dict[str, Any] | None = Field(
        description="The prompts whose mean state over the user turn at the run's target block lies "
        "furthest along the change the vector makes there (null: not read)."
    )
    alike: dict[str, Any] | None = Field(
        description="The prompts whose own unsteered answer lies furthest, in sentence-embedding "
        "space, along the change the vector makes to the run prompts' answers; with those steered "
        "answers (null: not read)."
    )
    concepts: list[dict[str, Any]] = Field(description="Cosines with the concepts at its block, as of now.")
