"""Jinja2 environment: autoescaping on, so model output always renders as text."""

from __future__ import annotations

from datetime import datetime

from fastapi.templating import Jinja2Templates

from app.settings import ROOT


def ago(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(ROOT / "templates"))
    templates.env.filters["when"] = ago
    templates.env.filters["percent"] = lambda x: f"{100 * float(x or 0):.0f}%"
    return templates
