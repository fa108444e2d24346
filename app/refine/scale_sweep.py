"""Refining a stored vector: its scale sweep (engine/refine/scale_sweep.py), stored and read back (it is
started in app/runs/launch.py).

A sweep is a run of kind `scale_sweep` whose parent is the vector. The worker sends everything in
one event at the end: the completions (stored as generations of the vector at each scale, beside
the unsteered ones, with their scores) and the per-scale figures with the two markers (the run's
result). Greedy, seed 0 and the gallery's length by default, so the sweep's completions are the
ones the vector page and the gallery show for the same scale.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import store
from app.errors import NotFound
from app.fields import numbers
from app.kinds import Kind
from app.models import Generation, LanguageModel, Run, Vector

GREEDY = {"seed": 0, "temperature": 0.0, "top_p": 1.0}
SCORES = ("effect", "fluency", "repetition", "flag")


def swept_vector(session: Session, run: Run) -> Vector:
    """The vector a sweep swept: its run's parent."""
    assert run.parent_vector_id is not None, "a scale sweep is started from a stored vector"
    return store.get_vector(session, run.parent_vector_id)


def record(session: Session, run: Run, found: dict[str, Any]) -> int:
    """Store what the worker found: the completions as generations (scored where nothing scored
    them before) and the per-scale figures in the run's result; how many completions."""
    vector = swept_vector(session, run)
    model = session.get(LanguageModel, run.model_id)
    assert model is not None, "a job reports `started` (and its model) before anything else"
    sampling = {**GREEDY, "max_new_tokens": int(run.spec["max_new_tokens"])}
    for row in found["unsteered"]:  # first: each steered row links to its unsteered partner
        store.add_generation(session, model, {**_generated(row), "vector_id": None, "scale": 0.0, **sampling})
    for row in found["completions"]:
        generation = store.add_generation(
            session,
            model,
            {
                **_generated(row),
                "vector_id": vector.id,
                "block": vector.block,
                "scale": row["scale"],
                **sampling,
            },
        )
        if generation.effect is None:  # a run's scoring (with its random twin) knows more: kept
            for name in SCORES:
                setattr(generation, name, row[name])
    run.source = vector.block
    run.result = {
        **run.result,
        "norm": vector.norm,
        "points": found["points"],
        "first_change": found["first_change"],
        "breaks": found["breaks"],
    }
    session.flush()
    return len(found["completions"])


def _generated(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("prompt", "text", "n_tokens", "finish_reason")}


def sweeps_of(session: Session, vector_id: int) -> list[Run]:
    """The vector's scale sweeps, newest first."""
    return list(
        session.scalars(
            select(Run)
            .where(Run.kind == Kind.SCALE_SWEEP, Run.parent_vector_id == vector_id)
            .order_by(Run.id.desc())
        )
    )


def get(session: Session, run_id: int) -> Run:
    run = store.get_run(session, run_id)
    if run.kind != Kind.SCALE_SWEEP:
        raise NotFound(f"run {run_id} is not a scale sweep (it is a {run.kind} run)")
    return run


def _generations(session: Session, keys: list[str]) -> list[Generation]:
    """The stored generations with these keys, in the keys' order (missing ones left out)."""
    found: dict[str, Generation] = {}
    for lo in range(0, len(keys), 500):  # one query per 500 keys
        chunk = keys[lo : lo + 500]
        found.update((g.key, g) for g in session.scalars(select(Generation).where(Generation.key.in_(chunk))))
    return [found[k] for k in keys if k in found]


def completions(session: Session, run: Run) -> tuple[list[Generation], list[Generation]]:
    """The sweep's stored completions (prompt by prompt, each at every scale) and the unsteered
    one of each prompt, found by the keys their requests have."""
    vector = swept_vector(session, run)
    sampling = {**GREEDY, "max_new_tokens": int(run.spec["max_new_tokens"])}
    prompts, scales = [str(p) for p in run.spec["prompts"]], [float(s) for s in run.spec["scales"]]
    steered = [
        store.generation_key(run.model_name, vector.id, s, vector.block, p, **sampling)
        for p in prompts
        for s in scales
    ]
    plain = [store.generation_key(run.model_name, None, 0.0, None, p, **sampling) for p in prompts]
    return _generations(session, steered), _generations(session, plain)


def summary(session: Session, run: Run) -> dict[str, Any]:
    """Everything the API and the plot show of one sweep."""
    vector = swept_vector(session, run)
    steered, plain = completions(session, run)
    result = run.result or {}
    return {
        "run_id": run.id,
        "vector_id": vector.id,
        "status": run.status,
        "block": vector.block,
        "norm": vector.norm,
        "prompts": list(run.spec["prompts"]),
        "scales": list(run.spec["scales"]),
        "max_new_tokens": int(run.spec["max_new_tokens"]),
        "points": result.get("points", []),
        "first_change": result.get("first_change"),
        "breaks": result.get("breaks"),
        "completions": steered,
        "unsteered": plain,
    }


def parse_scales(text: str) -> list[float]:
    """Scales from a form field: numbers separated by commas or spaces."""
    return numbers(text, "scales")


def grid(session: Session, run: Run) -> dict[str, Any]:
    """The sweep's completions by (prompt, scale), and the unsteered one by prompt (its run page)."""
    steered, plain = completions(session, run)
    return {"cells": {(g.prompt, g.scale): g for g in steered}, "unsteered": {g.prompt: g for g in plain}}
