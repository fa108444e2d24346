"""Pages of discovery: a run's behaviours, scoring it again, and the detectors page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from app import store
from app.deps import AuthorCookie, FormDep, ServiceDep, SessionDep
from app.discovery import detectors, findings
from app.discovery.api import queue_score
from app.errors import AppError
from app.fields import Whole, whole
from app.labels import labelling
from app.templating import render

router = APIRouter(include_in_schema=False)


@router.get("/runs/{run_id}/behaviours", response_class=HTMLResponse, include_in_schema=False)
def behaviours_page(
    run_id: Whole, request: Request, session: SessionDep, author: AuthorCookie = None
) -> HTMLResponse:
    run = store.get_run(session, run_id)
    found = findings.behaviours_of(session, run.id)
    context = {
        "run": run,
        "behaviours": found,
        "exemplars": findings.exemplars(session, found),
        "twin": findings.twin_of(session, run),
        "labels": labelling.all_labels(session),
        "author": author or "",
    }
    return render(request, "runs/behaviours.html", context)


@router.post("/runs/{run_id}/score", response_class=HTMLResponse, include_in_schema=False)
def score_page(run_id: Whole, service: ServiceDep) -> Response:
    queue_score(service, run_id)
    return Response(status_code=204, headers={"HX-Redirect": f"/runs/{run_id}"})


@router.get("/detectors", response_class=HTMLResponse, include_in_schema=False)
def detectors_page(request: Request, session: SessionDep) -> HTMLResponse:
    return render(
        request, "detectors/index.html", {"detectors": detectors.all_detectors(session), "error": ""}
    )


@router.post("/detectors", response_class=HTMLResponse, include_in_schema=False)
def save_detector_form(request: Request, service: ServiceDep, form: FormDep) -> Response:
    try:
        with service.db.session() as session:
            if form.get("delete"):
                detectors.delete_detector(session, whole(str(form.get("id", "")), "id"))
            else:
                edit = detectors.DetectorEdit(
                    name=str(form.get("name", "")),
                    kind=str(form.get("kind", "regex")),
                    pattern=str(form.get("pattern", "")),
                    judge_model=str(form.get("judge_model", "")),
                )
                detectors.save(session, edit)
    except (ValidationError, AppError, ValueError) as exc:
        message = exc.message if isinstance(exc, AppError) else str(exc).splitlines()[0]
        if isinstance(exc, ValidationError):
            message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        with service.db.session() as session:
            context = {"detectors": detectors.all_detectors(session), "error": message}
            return render(request, "detectors/index.html", context, status_code=422)
    return RedirectResponse("/detectors", status_code=303)
