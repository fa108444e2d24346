"""What a run page says about a run: the values it resolved (app/runs/facts.py, per kind) and its
settings as a table a person reads, each setting with its meaning and whether it was left at its
default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app import kinds
from app.models import Job, Run
from app.runs.facts import Fact, VectorStats

NOT_SETTINGS = {"prompts", "priority", "vector_id", "vector_ids", "block"}


@dataclass
class Setting:
    name: str
    value: str
    meaning: str
    default: bool  # left at the default


def facts(run: Run, job: Job | None, stats: VectorStats) -> list[Fact]:
    """The values a run actually used, resolved from its defaults once it ran."""
    return kinds.of(run.kind).facts(run, job, stats)


def _shown(value: Any) -> str:
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_shown(v) for v in value)
    return str(value)


def settings(run: Run) -> list[Setting]:
    """The run's spec as rows: name, value, meaning, whether it is the default."""
    body = kinds.of(run.kind).settings
    fields = body.model_fields if body is not None else {}
    rows = []
    for name, value in run.spec.items():
        if name in NOT_SETTINGS:
            continue
        info = fields.get(name)
        meaning = (info.description or "") if info is not None else ""
        default = info is not None and not info.is_required() and info.default == value
        rows.append(Setting(name, _shown(value), meaning, default))
    return rows
