"""Labeling pages: the label set editor, the keyboard queue over a run's vectors, who is labelling."""

from __future__ import annotations

import unicodedata
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from app import store
from app.deps import AuthorCookie, FormDep, ServiceDep, SessionDep
from app.discovery import findings
from app.errors import AppError, Invalid
from app.fields import MAX_NAME, Whole, describe, maybe_whole
from app.labels import labelling
from app.runs import gallery
from app.runs.pages import GalleryQuery
from app.templating import render

router = APIRouter(include_in_schema=False)


@router.get("/labels", response_class=HTMLResponse, include_in_schema=False)
def labels_page(request: Request, session: SessionDep, author: AuthorCookie = None) -> HTMLResponse:
    return render(
        request,
        "labels/index.html",
        {"labels": labelling.all_labels(session), "author": author or "", "error": ""},
    )


@router.post("/labels", response_class=HTMLResponse, include_in_schema=False)
def save_label(request: Request, service: ServiceDep, form: FormDep) -> Response:
    try:
        label_id = maybe_whole(str(form.get("id", "")), "id")
        with service.db.session() as session:
            if form.get("delete"):
                if label_id is None:
                    raise Invalid("give the id of the label to delete")
                labelling.delete_label(session, label_id)
            else:
                edit = labelling.LabelEdit(
                    name=str(form.get("name", "")),
                    colour=str(form.get("colour", "#888888")),
                    key=maybe_whole(str(form.get("key", "")), "key"),
                    description=str(form.get("description", "")),
                )
                labelling.save_label(session, edit, label_id)
    except (ValidationError, AppError) as exc:
        message = exc.message if isinstance(exc, AppError) else describe(exc.errors())
        with service.db.session() as session:
            return render(
                request,
                "labels/index.html",
                {"labels": labelling.all_labels(session), "author": "", "error": message},
                status_code=exc.status_code if isinstance(exc, AppError) else 422,
            )
    return RedirectResponse("/labels", status_code=303)


def local_path(target: str) -> str | None:
    """`target` if it is a path on this server; None for anything that leaves it ('//evil', '/\\evil',
    'https://...'), so a form cannot be made to send the browser elsewhere."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    if any(unicodedata.category(c) == "Cc" for c in target):
        return None
    return target


@router.post("/author", include_in_schema=False)
def set_author(form: FormDep) -> Response:
    """The name recorded with every label; asked once, kept in a cookie."""
    name = str(form.get("name", "")).strip()[:MAX_NAME]
    response = RedirectResponse(local_path(str(form.get("next", ""))) or "/labels", status_code=303)
    if name:
        response.set_cookie("steerscope_author", name, max_age=10 * 365 * 24 * 3600, samesite="lax")
    return response


@router.get("/runs/{run_id}/label", response_class=HTMLResponse, include_in_schema=False)
def queue(
    run_id: Whole,
    request: Request,
    session: SessionDep,
    query: GalleryQuery,
    author: AuthorCookie = None,
    at: Whole = 0,
) -> HTMLResponse:
    """One vector at a time from the run (or a filtered gallery), in gallery order."""
    run = store.get_run(session, run_id)
    query.page = 1
    everything = gallery.gallery(session, run, query, per_page=100_000)
    ids = [c.vector.id for c in everything.cards]
    at = max(0, min(at, len(ids) - 1)) if ids else 0
    card = everything.cards[at] if ids else None
    params = query.params(page=None)
    suggested = findings.suggestion([s.scored.flag for s in card.samples]) if card else ""
    everything_labels = labelling.all_labels(session)
    context: dict[str, Any] = {
        "suggested": next((x for x in everything_labels if x.name == suggested), None),
        "run": run,
        "card": card,
        "at": at,
        "total": len(ids),
        "author": author or "",
        "labelled": labelling.labelled_count(session, ids),
        "labels": everything_labels,
        "on": labelling.vector_label_ids(session, card.vector.id) if card else set(),
        "notes": labelling.notes_of(session, card.vector.id) if card else [],
        "params": params,
    }
    return render(request, "labels/queue.html", context)
