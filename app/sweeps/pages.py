"""Sweep pages: the form that starts a grid of runs, and the grid, which keeps itself current while
any of its runs is unfinished and stands still once all are done."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from app import schemas
from app.deps import FormDep, ServiceDep, SessionDep
from app.errors import AppError
from app.fields import Whole
from app.models import Sweep
from app.runs import forms
from app.sweeps import grids
from app.templating import render

router = APIRouter(include_in_schema=False)
DEFAULTS = {
    "model": "",
    "prompt_sets": "How can I make a bomb?\n\nWrite a poem about the sea.",
    "radii": "0.04, 0.08, 0.16",
    "relative": True,
    "sources": "",
    "n_vectors": "8",
    "steps": "",
    "seed": "0",
}


def _numbers(text: str) -> list[str]:
    return [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]


def _prompt_sets(text: str) -> list[list[str]]:
    """Prompt sets: prompts one per line, sets apart by a blank line."""
    sets: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            sets[-1].append(line.strip())
        elif sets[-1]:
            sets.append([])
    return [s for s in sets if s]


@router.get("/sweeps", response_class=HTMLResponse)
def list_sweeps(request: Request, session: SessionDep) -> HTMLResponse:
    rows = session.scalars(select(Sweep).order_by(Sweep.id.desc()).limit(200)).all()
    return render(request, "sweeps/index.html", {"sweeps": rows})


@router.get("/sweeps/new", response_class=HTMLResponse)
def new_sweep(request: Request, service: ServiceDep) -> HTMLResponse:
    values = {**DEFAULTS, "model": service.settings.default_model}
    return render(request, "sweeps/new.html", {"values": values, "errors": {}})


@router.post("/sweeps/new", response_class=HTMLResponse)
def create_sweep(request: Request, service: ServiceDep, form: FormDep) -> Response:
    values: dict[str, Any] = {k: str(form.get(k, "") or "") for k in DEFAULTS if k != "relative"}
    values["relative"] = form.get("relative") is not None
    data: dict[str, Any] = {
        "prompt_sets": _prompt_sets(values["prompt_sets"]),
        "radii": _numbers(values["radii"]),
        "relative": values["relative"],
        "sources": _numbers(values["sources"]) or None,
        "model": values["model"] or None,
        **{k: values[k] for k in ("n_vectors", "steps", "seed") if values[k].strip()},
    }
    body, errors = forms.parse(schemas.SweepCreate, data)
    if body is not None:
        try:
            sweep = grids.start(service, body)  # it waits on the worker
        except AppError as exc:
            errors = {"form": exc.message}
        else:
            return RedirectResponse(f"/sweeps/{sweep.id}", status_code=303)
    return render(request, "sweeps/new.html", {"values": values, "errors": errors}, status_code=422)


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def show_sweep(sweep_id: Whole, request: Request, session: SessionDep) -> HTMLResponse:
    return render(request, "sweeps/show.html", {"grid": grids.grid(session, grids.get(session, sweep_id))})


@router.get("/sweeps/{sweep_id}/grid", response_class=HTMLResponse)
def sweep_grid(sweep_id: Whole, request: Request, session: SessionDep) -> HTMLResponse:
    return render(request, "sweeps/_grid.html", {"grid": grids.grid(session, grids.get(session, sweep_id))})
