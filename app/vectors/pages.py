"""A vector's page: metadata, completions at several scales, a custom prompt, neighbours, chains."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import escape
from pydantic import ValidationError
from sqlalchemy import select

from app import schemas, store
from app.deps import FormDep, ServiceDep, SessionDep
from app.discovery import detectors
from app.errors import AppError
from app.fields import Whole, describe
from app.generations import sampling
from app.kinds import Kind
from app.labels import labelling
from app.models import Generation, Job, Run, Vector
from app.refine import refinements
from app.refine.pages import sweep_context
from app.runs import gallery, launch
from app.templating import render
from app.vectors import dashboard, geometry

router = APIRouter(include_in_schema=False)
SCALES = (-1.0, 0.5, 1.0, 2.0, 4.0)
NEIGHBOURS = 8


def scale_table(session: Any, vector: Vector, prompts: list[str], tokens: int) -> dict[str, Any]:
    """Greedy completions by (prompt, scale), with the unsteered one per prompt; None where missing."""
    rows = session.scalars(
        select(Generation).where(
            Generation.vector_id == vector.id,
            Generation.temperature == 0.0,
            Generation.seed == 0,
            Generation.max_new_tokens == tokens,
            Generation.prompt.in_(prompts),
        )
    ).all()
    cells = {(g.prompt, g.scale): g for g in rows}
    unsteered = {g.prompt: session.get(Generation, g.unsteered_id) for g in rows if g.unsteered_id}
    missing = any((p, s) not in cells for p in prompts for s in SCALES)
    latest = session.scalars(
        select(Job)
        .join(Run, Job.run_id == Run.id)
        .where(Run.kind == Kind.GENERATE, Run.inputs["vector_ids"][0].as_integer() == vector.id)
        .order_by(Job.id.desc())
        .limit(1)
    ).first()
    live = latest is not None and latest.status in ("queued", "running")
    # A sampling job that ended without filling the table is not started again by itself.
    stuck = latest is not None and missing and not live and latest.status != "succeeded"
    return {
        "cells": cells,
        "unsteered": unsteered,
        "missing": missing,
        "job": latest if live else None,
        "failed": latest if stuck else None,
    }


@router.get("/vectors/{vector_id}", response_class=HTMLResponse)
def show_vector(vector_id: Whole, request: Request, session: SessionDep, service: ServiceDep) -> HTMLResponse:
    vector = store.get_vector(session, vector_id)
    run = vector.run
    prompts = [str(p) for p in run.prompts]
    candidates = session.execute(
        select(Vector.id, Vector.values)
        .join(Run, Vector.run_id == Run.id)
        .where(
            Run.model_name == run.model_name,
            Vector.block == vector.block,
            Vector.width == vector.width,
            Vector.run_id != vector.run_id,  # its own run's vectors are orthogonal by construction
        )
    ).all()
    near = geometry.nearest(vector.values, [c.values for c in candidates], NEIGHBOURS)
    neighbours = [(session.get(Vector, candidates[i].id), cos) for i, cos in near]
    chains = session.scalars(
        select(Run).where(Run.kind == Kind.CHAIN, Run.parent_vector_id == vector.id)
    ).all()
    context = {
        "vector": vector,
        "adapter": vector.adapter,  # its factors' rank and R when it is a steering adapter
        "run": run,
        "prompts": prompts,
        "scales": SCALES,
        "table": scale_table(session, vector, prompts, service.settings.gallery_tokens),
        "neighbours": neighbours,
        "chains": chains,
        "labels": gallery.labels_of(session, [vector.id]).get(vector.id, []),
        "notes": labelling.notes_of(session, vector.id),
        **sweep_context(session, vector),
        "refinements": refinements.refinements_of(session, vector.id),
        "detectors": detectors.all_detectors(session),
        **dashboard.context(session, vector),
        "default_multiples": ", ".join(f"{m:g}" for m in schemas.DEFAULT_MULTIPLES),
    }
    return render(request, "vectors/show.html", context)


@router.get("/vectors/{vector_id}/scales", response_class=HTMLResponse)
def vector_scales(
    vector_id: Whole, request: Request, session: SessionDep, service: ServiceDep
) -> HTMLResponse:
    vector = store.get_vector(session, vector_id)
    prompts = [str(p) for p in vector.run.prompts]
    table = scale_table(session, vector, prompts, service.settings.gallery_tokens)
    return render(
        request,
        "vectors/_scales.html",
        {"vector": vector, "prompts": prompts, "scales": SCALES, "table": table},
    )


@router.post("/vectors/{vector_id}/scales", response_class=HTMLResponse)
def generate_scales(vector_id: Whole, request: Request, service: ServiceDep) -> HTMLResponse:
    with service.db.session() as session:
        prompts = [str(p) for p in store.get_vector(session, vector_id).run.prompts]
    body = schemas.SamplesCreate(
        vector_ids=[vector_id],
        prompts=prompts,
        scales=list(SCALES),
        max_new_tokens=service.settings.gallery_tokens,
    )
    launch.start_samples(service, body)
    with service.db.session() as session:
        return vector_scales(vector_id, request, session, service)


@router.post("/vectors/{vector_id}/generate", response_class=HTMLResponse)
def custom_prompt(vector_id: Whole, request: Request, service: ServiceDep, form: FormDep) -> HTMLResponse:
    """Steered and unsteered on the user's prompt with the same seed; stored like every generation."""
    values = {k: str(form.get(k, "")) for k in ("prompt", "scale", "seed", "max_new_tokens", "temperature")}
    try:
        body = schemas.GenerationCreate.model_validate(
            {"vector_id": vector_id, **{k: v for k, v in values.items() if v != ""}}
        )
        result = sampling.generate_now(service, body)
    except ValidationError as exc:
        return render(
            request,
            "vectors/_custom.html",
            {"error": describe(exc.errors()), "values": values},
            status_code=422,
        )
    except AppError as exc:
        return render(
            request,
            "vectors/_custom.html",
            {"error": exc.message, "values": values},
            status_code=exc.status_code,
        )
    return render(request, "vectors/_custom.html", {"result": result, "values": values, "error": ""})


@router.post("/vectors/{vector_id}/chain", response_class=HTMLResponse)
def start_chain(vector_id: Whole, service: ServiceDep, form: FormDep) -> Response:
    data = {k: str(form.get(k, "")) for k in ("n_vectors", "steps") if form.get(k)}
    try:
        body = schemas.ChainCreate.model_validate({"vector_id": vector_id, **data})
        job = launch.start_chain(service, body)
    except ValidationError as exc:
        return HTMLResponse(f'<p class="error">{escape(describe(exc.errors()))}</p>', status_code=422)
    except AppError as exc:
        return HTMLResponse(f'<p class="error">{escape(exc.message)}</p>', status_code=exc.status_code)
    return Response(status_code=204, headers={"HX-Redirect": f"/runs/{job.run_id}"})


@router.get("/vectors/{vector_id}/dashboard", response_class=HTMLResponse)
def dashboard_section(vector_id: Whole, request: Request, session: SessionDep) -> HTMLResponse:
    """The dashboard piece: what is stored (a reading in progress asks for this again)."""
    return render(
        request, "vectors/_dashboard.html", dashboard.context(session, store.get_vector(session, vector_id))
    )


@router.post("/vectors/{vector_id}/dashboard", response_class=HTMLResponse)
def start_dashboard(vector_id: Whole, request: Request, service: ServiceDep, form: FormDep) -> HTMLResponse:
    """The form: queue a reading of the vector, then show the piece following it (or why not)."""
    error, status = "", 200
    try:
        body = schemas.DashboardCreate.model_validate({"rank_by": str(form.get("rank_by") or "max")})
        launch.start_dashboard(service, vector_id, body)
    except ValidationError as exc:
        error, status = describe(exc.errors()), 422
    except AppError as exc:
        error, status = exc.message, exc.status_code
    with service.db.session() as session:
        context = dashboard.context(session, store.get_vector(session, vector_id))
    return render(request, "vectors/_dashboard.html", {**context, "error": error}, status_code=status)
