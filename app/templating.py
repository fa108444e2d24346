"""Jinja2 environment: autoescaping on, so model output always renders as text."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi.templating import Jinja2Templates

from app.models import now
from app.settings import ROOT


def ago(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


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


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(ROOT / "templates"))
    templates.env.filters["when"] = ago
    templates.env.filters["percent"] = lambda x: f"{100 * float(x or 0):.0f}%"
    templates.env.filters["num"] = num
    templates.env.filters["eta"] = eta
    templates.env.filters["heat"] = heat
    return templates
