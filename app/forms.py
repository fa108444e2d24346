"""HTML forms: turn submitted fields into API bodies, and errors back into per-field messages."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData

from app import schemas

# Where an engine message belongs on the run form: the first field whose words it starts with.
MESSAGE_FIELDS = [
    ("source block", "source"),
    ("target", "target"),
    ("R (radius)", "radius"),
    ("number of vectors", "n_vectors"),
    ("steps", "steps"),
    ("positions", "positions"),
    ("lr", "lr"),
    ("q", "q"),
    ("p ", "p"),
    ("prompt", "prompts"),
    ("give at least one prompt", "prompts"),
    ("cannot load model", "model"),
    ("batch size", "batch_size"),
    ("seed", "seed"),
]

RUN_FIELDS = (
    "model",
    "method",
    "source",
    "target",
    "radius",
    "p",
    "q",
    "n_vectors",
    "steps",
    "lr",
    "positions",
    "loss",
    "normalize",
    "orthogonal",
    "mode",
    "seed",
    "batch_size",
)


def field_for(message: str) -> str:
    for start, field in MESSAGE_FIELDS:
        if message.startswith(start) or message.startswith(f"{field} "):
            return field
    return "form"


def run_values(form: FormData) -> dict[str, Any]:
    """What the user typed, as strings, to fill the form again after an error."""
    values: dict[str, Any] = {name: str(form.get(name, "") or "") for name in RUN_FIELDS}
    values["prompts"] = str(form.get("prompts", "") or "")
    values["orthogonal"] = form.get("orthogonal") is not None
    values["normalize"] = form.get("normalize") is not None
    return values


def run_body(values: dict[str, Any]) -> tuple[schemas.MelboCreate | None, dict[str, str]]:
    """The API body for the form's values, or the errors by field."""
    data: dict[str, Any] = {
        k: v for k, v in values.items() if k not in ("prompts", "orthogonal", "normalize") and v != ""
    }
    data["prompts"] = [line.strip() for line in values["prompts"].splitlines() if line.strip()]
    data["orthogonal"] = bool(values["orthogonal"])
    data["normalize"] = bool(values["normalize"])
    try:
        return schemas.MelboCreate.model_validate(data), {}
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for e in exc.errors():
            field = str(e["loc"][0]) if e["loc"] else "form"
            errors.setdefault(field, e["msg"].replace("Input should be", "should be"))
        return None, errors
