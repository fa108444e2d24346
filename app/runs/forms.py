"""HTML forms: turn submitted fields into API bodies, and errors back into per-field messages a person
reads ("vectors must be a whole number, got 'eight'"), every field's at once."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from starlette.datastructures import FormData

from app import schemas
from app.errors import AppError
from app.fields import plain
from app.kinds import Kind
from app.runs import launch
from app.service import Service

B = TypeVar("B", bound=BaseModel)

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
    ("loss", "loss"),
    ("normalize", "normalize"),
    ("orthogonal", "orthogonal"),
    ("mode", "mode"),
    ("beta", "beta"),
    ("rank", "rank"),
]

# How fields are called on the pages (the API's names otherwise).
LABELS = {
    "n_vectors": "vectors",
    "radius": "R",
    "source": "source block",
    "target": "target block",
    "max_new_tokens": "new tokens",
    "batch_size": "batch size",
    "loss_threshold": "loss threshold",
    "vector_id": "vector",
}

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
    "twin",
    "beta",
    "rank",
)
CHECKBOXES = ("orthogonal", "normalize", "twin")
NEEDED = ("form", "prompts", "model")  # a field without which nothing else can be checked


def readable(error: ErrorDetails) -> str:
    """One pydantic error as a sentence about the field, without pydantic's vocabulary."""
    name = str(error["loc"][-1]) if error["loc"] else "value"
    label = LABELS.get(name, name)
    given = error.get("input")
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{label} must be a whole number, got {given!r}"
    if kind in ("float_parsing", "float_type"):
        return f"{label} must be a number, got {given!r}"
    if kind == "finite_number":
        return f"{label} must be a finite number, got {given!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{label} must be yes or no, got {given!r}"
    if kind == "literal_error":
        return f"{label} must be one of {ctx.get('expected', '')}, got {given!r}"
    if kind == "missing":
        return f"{label} is required"
    for bound, word in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
        if bound in ctx:
            return f"{label} must be {word} {ctx[bound]}, got {given!r}"
    return f"{label} {plain(error)}"


def parse(body: type[B], data: dict[str, Any]) -> tuple[B | None, dict[str, str]]:
    """The body for `data`, or a readable error for every field that is wrong."""
    try:
        return body.model_validate(data), {}
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for e in exc.errors():
            errors.setdefault(str(e["loc"][0]) if e["loc"] else "form", readable(e))
        return None, errors


def problems(errors: dict[str, str]) -> str:
    """Errors by field as one line, for forms that show a single message."""
    return "; ".join(errors.values())


def prompt_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def field_for(message: str) -> str:
    for start, field in MESSAGE_FIELDS:
        if message.startswith(start) or message.startswith(f"{field} "):
            return field
    return "form"


def _text(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_defaults(*, model: str, prompts: str = "") -> dict[str, Any]:
    """The new-run form as it opens: the API's defaults (themselves the engine's), blank for auto."""
    fields = schemas.MelboCreate.model_fields
    values = {name: _text(fields[name].default) for name in RUN_FIELDS}
    return {**values, "model": model, "prompts": prompts, "twin": True}  # a new run gets its twin


def run_help() -> dict[str, str]:
    """What each field means, from the API schema, shown beside it."""
    return {name: info.description or "" for name, info in schemas.MelboCreate.model_fields.items()}


def run_values(form: FormData) -> dict[str, Any]:
    """What the user typed, as strings, to fill the form again after an error."""
    values: dict[str, Any] = {name: str(form.get(name, "") or "") for name in RUN_FIELDS}
    values["prompts"] = str(form.get("prompts", "") or "")
    for name in CHECKBOXES:
        values[name] = form.get(name) is not None
    return values


def _data(values: dict[str, Any], leave_out: set[str]) -> dict[str, Any]:
    data: dict[str, Any] = {
        k: v
        for k, v in values.items()
        if k not in ("prompts", *CHECKBOXES) and k not in leave_out and str(v).strip() != ""
    }
    data["prompts"] = prompt_lines(values["prompts"])
    for name in CHECKBOXES:
        data[name] = bool(values[name])
    if data.get("method") == Kind.DCT:
        # The box is ticked for every new run; a DCT run calibrates its R inside its job, so no twin
        # can be queued beside it at the same R (its scores have no beyond-random baseline).
        data["twin"] = False
    return data


def run_body(values: dict[str, Any]) -> tuple[schemas.MelboCreate | None, dict[str, str]]:
    """The API body for the form's values, or the errors by field."""
    return parse(schemas.MelboCreate, _data(values, set()))


def all_errors(
    service: Service, values: dict[str, Any], errors: dict[str, str], tries: int = 6
) -> dict[str, str]:
    """The form's errors with the model-dependent ones added: the worker's check stops at the first
    problem, so each wrong field is set aside (its default used) and the rest checked again."""
    errors = dict(errors)
    for _ in range(tries):
        body, more = parse(schemas.MelboCreate, _data(values, set(errors)))
        if body is None:
            return {**more, **errors}
        try:
            launch.check_melbo(service, body)
        except AppError as exc:
            field = field_for(exc.message)
            if field in errors:
                break
            errors[field] = exc.message
            if field in NEEDED:
                break
        else:
            break
    return errors
