"""The new-run form: its defaults, submitting it, and its two helpers (how the model sees the
prompts, and calibrating R)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from app import jobs, schemas
from app.deps import FormDep, ServiceDep, SessionDep
from app.errors import AppError
from app.executor.protocol import Render
from app.fields import MAX_PROMPTS, Text, Whole, model_name
from app.kinds import Kind
from app.models import LanguageModel
from app.runs import forms, launch
from app.templating import render

router = APIRouter(include_in_schema=False)


def model_names(session: Any, default: str) -> list[str]:
    names = [m for m in session.scalars(select(LanguageModel.name).order_by(LanguageModel.id))]
    return [default, *[n for n in names if n != default]]


def form_context(
    session: Any, service: Any, values: dict[str, Any], errors: dict[str, str]
) -> dict[str, Any]:
    return {
        "values": values,
        "errors": errors,
        "models": model_names(session, service.settings.default_model),
        "help": forms.run_help(),
    }


@router.get("/runs/new", response_class=HTMLResponse)
def new_run(request: Request, session: SessionDep, service: ServiceDep, prompt: Text = "") -> HTMLResponse:
    values = forms.run_defaults(model=service.settings.default_model, prompts=prompt)
    return render(request, "runs/new.html", form_context(session, service, values, {}))


@router.post("/runs/new", response_class=HTMLResponse)
def create_run(request: Request, session: SessionDep, service: ServiceDep, form: FormDep) -> Response:
    values = forms.run_values(form)
    body, errors = forms.run_body(values)
    if body is not None:
        try:
            job = launch.start_melbo(service, body)
        except AppError as exc:
            errors = {forms.field_for(exc.message): exc.message}
        else:
            url = f"/runs/{job.run_id}"
            if request.headers.get("HX-Request"):
                return Response(status_code=204, headers={"HX-Redirect": url})
            return RedirectResponse(url, status_code=303)
    if body is None or errors:
        # Every field's error at once: the model-dependent checks run on what did parse too.
        errors = forms.all_errors(service, values, errors)
    template = "runs/_form.html" if request.headers.get("HX-Request") else "runs/new.html"
    return render(request, template, form_context(session, service, values, errors), status_code=422)


@router.post("/runs/preview", response_class=HTMLResponse)
def preview(request: Request, service: ServiceDep, form: FormDep) -> HTMLResponse:
    prompts = forms.prompt_lines(str(form.get("prompts", "")))[:MAX_PROMPTS]
    context: dict[str, Any] = {"prompts": prompts, "error": ""}
    if prompts:
        try:
            model = model_name(str(form.get("model") or service.settings.default_model))
            context["shown"] = service.ask(Render(model=model, prompts=prompts))
        except AppError as exc:
            context["error"] = exc.message
    return render(request, "runs/_preview.html", context)


@router.post("/runs/calibrate", response_class=HTMLResponse)
def calibrate(request: Request, service: ServiceDep, form: FormDep) -> HTMLResponse:
    fields = {k: str(form.get(k, "")).strip() for k in ("model", "source", "target", "positions")}
    data: dict[str, Any] = {k: v for k, v in fields.items() if v}
    if "positions" not in data and str(form.get("method", "")) in (Kind.MELBO, Kind.RANDOM):
        data["positions"] = schemas.MELBO_POSITIONS  # where the run will read, left blank
    data["prompts"] = forms.prompt_lines(str(form.get("prompts", "")))
    context: dict[str, Any] = {"job": None, "error": "", "radius": None}
    body, errors = forms.parse(schemas.CalibrationCreate, data)
    if body is None:
        context["error"] = "; ".join(f"{forms.LABELS.get(k, k)}: {v}" for k, v in errors.items())
        return render(request, "runs/_calibration.html", context)
    try:
        context["job"] = launch.start_calibration(service, body)
    except AppError as exc:
        context["error"] = exc.message
    return render(request, "runs/_calibration.html", context)


@router.get("/runs/calibrate/{job_id}", response_class=HTMLResponse)
def calibration_status(job_id: Whole, request: Request, session: SessionDep) -> HTMLResponse:
    job = jobs.get(session, job_id)
    radius = job.run.radius if job.status == "succeeded" else None
    error = job.error or ("the calibration was cancelled" if job.status == "cancelled" else "")
    context = {"job": job, "error": error, "radius": radius, "help": forms.run_help()}
    return render(request, "runs/_calibration.html", context)
