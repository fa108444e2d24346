"""Jinja2 environment: autoescaping on, so model output always renders as text."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app import kinds
from app.discovery.changes import change_words
from app.guard import cross_site, csrf_value
from app.models import now
from app.runs.scales import LADDER_TEXT
from app.settings import ROOT


def ago(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def span(seconds: float) -> str:
    """A length of time as a person says it: 850 ms, 12 s, 3 min 5 s, 2 h 10 min."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


def duration(job: Any) -> str:
    """How long a job ran (so far, while it runs); blank before it started."""
    if not job.started_at:
        return ""
    end = job.finished_at or now()
    return ("running for " if job.finished_at is None else "took ") + span(
        (end - job.started_at).total_seconds()
    )


def waited(job: Any) -> str:
    """How long a job waited in the queue before it started (so far, while it waits)."""
    end = job.started_at or now()
    return span(max(0.0, (end - job.created_at).total_seconds()))


def eta(job: Any) -> str:
    """Time left, extrapolated from the time so far and the progress."""
    if not job.started_at or job.progress <= 0.01:
        return "estimating time left"
    elapsed = (now() - job.started_at).total_seconds()
    left = elapsed * (1 - job.progress) / job.progress
    return f"about {left / 60:.0f} min left" if left >= 90 else f"about {max(left, 1):.0f} s left"


def heat(value: float) -> str:
    """A diverging colour for a cosine in [-1, 1]: blue negative, white zero, red positive."""
    c = max(-1.0, min(1.0, float(value)))
    fade = int(255 * (1 - abs(c)))
    return f"rgb(255,{fade},{fade})" if c >= 0 else f"rgb({fade},{fade},255)"


def shade(value: float, top: float) -> str:
    """A token's highlight strength in a context, 0..1: its projection against the context's top."""
    return f"{max(0.0, min(1.0, float(value) / float(top))) if top > 0 else 0.0:.3f}"


def csrf_for(request: Any) -> str:
    """The CSRF token the page's forms carry; empty where no cookie authenticates (no access token)."""
    token: str = request.app.state.settings.token
    return csrf_value(token) if token else ""


def from_elsewhere(request: Any) -> bool:
    """The page was opened from another site's page: it asks the worker for nothing by itself
    (what it would compute on load waits for a click), so another site cannot make the worker
    busy by sending browsers to it."""
    return cross_site(request.headers) is not None


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(ROOT / "templates"))
    templates.env.filters["when"] = ago
    templates.env.filters["percent"] = lambda x: f"{100 * float(x or 0):.0f}%"
    templates.env.filters["num"] = num
    templates.env.filters["eta"] = eta
    templates.env.filters["duration"] = duration
    templates.env.filters["waited"] = waited
    templates.env.filters["heat"] = heat
    templates.env.filters["changes"] = change_words
    templates.env.filters["shade"] = shade
    templates.env.globals["csrf_for"] = csrf_for
    templates.env.globals["from_elsewhere"] = from_elsewhere
    templates.env.globals["kind_info"] = kinds.of
    templates.env.globals["kind_methods"] = kinds.methods
    templates.env.globals["working_ladder"] = LADDER_TEXT  # "the highest of 0.5, 0.75, 1, ..."
    return templates


def render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """A page (or partial) rendered with the app's templates."""
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request, template, context, status_code=status_code
    )
    return response
