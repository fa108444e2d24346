"""The concepts page (the list and the form that makes one), and a concept's detector form."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from app import schemas
from app.concepts import detection
from app.deps import FormDep, ServiceDep, SessionDep
from app.errors import AppError
from app.fields import Whole, describe
from app.runs import launch
from app.runs.forms import prompt_lines
from app.templating import render

router = APIRouter(include_in_schema=False)
FIELDS = ("name", "positive", "negative", "block", "method", "norm", "model")


def _page(
    request: Request, session: Any, values: dict[str, str], error: str = "", status: int = 200
) -> HTMLResponse:
    context = {"concepts": detection.concepts(session), "values": values, "error": error}
    return render(request, "concepts/index.html", context, status_code=status)


@router.get("/concepts", response_class=HTMLResponse)
def concepts_page(request: Request, session: SessionDep) -> HTMLResponse:
    return _page(request, session, {})


@router.post("/concepts", response_class=HTMLResponse)
def make_concept(request: Request, service: ServiceDep, form: FormDep) -> Response:
    """The form: check everything (the worker checks the prompts against the model), then the run."""
    values = {k: str(form.get(k, "")) for k in FIELDS}
    data: dict[str, Any] = {
        "name": values["name"].strip(),
        "positive": prompt_lines(values["positive"]),
        "negative": prompt_lines(values["negative"]),
        "method": values["method"] or "diffmean",
        "norm": values["norm"] or "raw",
    }
    for key in ("block", "model"):
        if values[key].strip():
            data[key] = values[key].strip()
    error, status = "", 200
    try:
        job = launch.start_concept(service, schemas.ConceptCreate.model_validate(data))
        return Response(
            status_code=303, headers={"Location": f"/runs/{job.run_id}", "HX-Redirect": f"/runs/{job.run_id}"}
        )
    except ValidationError as exc:
        error, status = describe(exc.errors()), 422
    except AppError as exc:
        error, status = exc.message, exc.status_code
    with service.db.session() as session:
        return _page(request, session, values, error, status)


@router.post("/concepts/{run_id}/detect", response_class=HTMLResponse)
def detect_form(run_id: Whole, request: Request, service: ServiceDep, form: FormDep) -> HTMLResponse:
    """Prompts scored by the concept (one a line): the detector's answer, or why not."""
    try:
        found = detection.detect(service, run_id, prompt_lines(str(form.get("prompts", ""))))
    except AppError as exc:
        return render(request, "concepts/_detect.html", {"error": exc.message}, status_code=exc.status_code)
    return render(request, "concepts/_detect.html", {"found": found, "error": ""})
