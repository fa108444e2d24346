"""A vector page's forms that refine it into new vectors (R-path, generalize, search): each queues
its run and sends the browser to the run's page, which follows it live and then shows its result."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from app import schemas
from app.deps import FormDep, ServiceDep
from app.errors import AppError
from app.fields import Whole, describe, numbers
from app.models import Job
from app.runs import launch

router = APIRouter(include_in_schema=False)


def _lines(text: str) -> list[str]:
    """Prompts from a text area: one per line, blank lines left out."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _start(start: Callable[[], Job]) -> Response:
    """Queue the run and send the page to it; a refused request gets its reason, with nothing queued."""
    try:
        job = start()
    except ValidationError as exc:
        return HTMLResponse(f'<p class="error">{escape(describe(exc.errors()))}</p>', status_code=422)
    except AppError as exc:
        return HTMLResponse(f'<p class="error">{escape(exc.message)}</p>', status_code=exc.status_code)
    return Response(status_code=204, headers={"HX-Redirect": f"/runs/{job.run_id}"})


def _filled(form: Any, names: tuple[str, ...]) -> dict[str, str]:
    return {k: str(form.get(k, "")).strip() for k in names if str(form.get(k, "")).strip()}


@router.post("/vectors/{vector_id}/rpath", response_class=HTMLResponse)
def start_rpath(vector_id: Whole, service: ServiceDep, form: FormDep) -> Response:

    def start() -> Job:
        multiples = numbers(str(form.get("multiples", "")), "multiples of R")
        body = schemas.RPathCreate.model_validate({"multiples": multiples, **_filled(form, ("steps",))})
        return launch.start_rpath(service, vector_id, body)

    return _start(start)


@router.post("/vectors/{vector_id}/generalize", response_class=HTMLResponse)
def start_generalize(vector_id: Whole, service: ServiceDep, form: FormDep) -> Response:

    def start() -> Job:
        lines = {k: _lines(str(form.get(k, ""))) for k in ("probes", "held_out")}
        body = schemas.GeneralizeCreate.model_validate({**lines, **_filled(form, ("steps",))})
        return launch.start_generalize(service, vector_id, body)

    return _start(start)


@router.post("/vectors/{vector_id}/search", response_class=HTMLResponse)
def start_search(vector_id: Whole, service: ServiceDep, form: FormDep) -> Response:

    def start() -> Job:
        fields = _filled(form, ("detector_id", "budget", "population", "sigma"))
        body = schemas.SearchCreate.model_validate(fields)
        return launch.start_search(service, vector_id, body)

    return _start(start)
