"""A vector page's scale sweeps: the form that starts one, and the section that follows it and then
plots it (effect, fluency and next-token KL against scale, with where it changes and breaks)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app import schemas, store
from app.deps import FormDep, ServiceDep, SessionDep
from app.errors import AppError
from app.fields import Whole, describe
from app.models import Vector
from app.refine import scale_sweep
from app.runs import launch
from app.runs.pages import is_live, job_of
from app.templating import render

router = APIRouter(include_in_schema=False)
DEFAULT_SCALES = ", ".join(f"{s:g}" for s in schemas.DEFAULT_SCALES)


def sweep_context(session: Session, vector: Vector) -> dict[str, Any]:
    """The section's state: the vector's sweeps, the newest one's job while it runs or if it ended
    without a result, and the newest sweep with a result (the one plotted)."""
    sweeps = scale_sweep.sweeps_of(session, vector.id)
    job = job_of(session, sweeps[0]) if sweeps else None
    ended_badly = job is not None and job.status in ("failed", "cancelled")
    return {
        "vector": vector,
        "sweeps": sweeps,
        "sweep_job": job if is_live(job) or ended_badly else None,
        "sweep_live": is_live(job),
        "shown": next((s for s in sweeps if s.result.get("points")), None),
        "default_scales": DEFAULT_SCALES,
    }


@router.get("/vectors/{vector_id}/scale-sweep", response_class=HTMLResponse)
def scale_sweep_section(vector_id: Whole, request: Request, session: SessionDep) -> HTMLResponse:
    context = sweep_context(session, store.get_vector(session, vector_id))
    return render(request, "vectors/_scale_sweep.html", context)


@router.post("/vectors/{vector_id}/scale-sweep", response_class=HTMLResponse)
def start_scale_sweep(vector_id: Whole, request: Request, service: ServiceDep, form: FormDep) -> HTMLResponse:
    """The form: queue a sweep at the scales given, then show the section following it (or, with the
    sweep refused, the section and why)."""
    error, status = "", 200
    try:
        scales = scale_sweep.parse_scales(str(form.get("scales", "")))
        body = schemas.ScaleSweepCreate.model_validate({"scales": scales})
        launch.start_scale_sweep(service, vector_id, body)
    except ValidationError as exc:
        error, status = describe(exc.errors()), 422
    except AppError as exc:
        error, status = exc.message, exc.status_code
    with service.db.session() as session:
        context = sweep_context(session, store.get_vector(session, vector_id))
    return render(request, "vectors/_scale_sweep.html", {**context, "error": error}, status_code=status)
