"""Field types every route, form and request body shares, so one rule holds everywhere.

SQLite stores integers in 64 signed bits: an id, offset, seed or priority is a whole number from 0
to 2⁶³ − 1, written in ASCII digits. Texts have caps, so no field can grow a row (or a page) without
bound. Imported metadata is checked with the same types.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any

from annotated_types import Ge, Len, Lt
from pydantic import AfterValidator, BeforeValidator, StringConstraints, TypeAdapter, ValidationError

from app.errors import Invalid

INT_LIMIT = 2**63  # SQLite's INTEGER is a signed 64-bit number
MAX_NAME = 100  # label names, authors
MAX_TITLE = 200  # conversation titles
MAX_MODEL = 500  # a model name, hub id or folder
MAX_TEXT = 20_000  # a prompt, a chat message, a note
MAX_PROMPTS = 256  # prompts of one run (or of an imported file)


def _whole_number(value: Any) -> Any:
    """Refuse what int() would bend into a number: True, '²', '٣', '+5', '1_000', ' 5'."""
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true or false")
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError(f"must be a whole number, got {value[:40]!r}")
    return value


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


# 0 <= n < 2**63, in ASCII digits: ids, offsets, seeds, priorities, and every count a request gives.
# (The bounds come first so that the schema shows them as minimum/exclusiveMaximum; the check of
# the raw input wraps them and runs before.)
Whole = Annotated[int, Ge(0), Lt(INT_LIMIT), BeforeValidator(_whole_number)]
# The same, where a blank form field means "none" (a filter left empty).
MaybeWhole = Annotated[Whole | None, BeforeValidator(_blank_is_none)]


def _no_controls(value: str) -> str:
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError("must not contain control characters")
    return value


Name = Annotated[str, StringConstraints(max_length=MAX_NAME)]
Title = Annotated[str, StringConstraints(max_length=MAX_TITLE)]
# A model is named by a hub id or a folder: a control character (NUL above all) is never part of one.
ModelName = Annotated[str, StringConstraints(max_length=MAX_MODEL), AfterValidator(_no_controls)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Prompts = Annotated[list[Text], Len(0, MAX_PROMPTS)]

_WHOLE: TypeAdapter[int] = TypeAdapter(Whole)
_MODEL: TypeAdapter[str] = TypeAdapter(ModelName)


def whole(value: str, field: str) -> int:
    """A form or URL field that must hold a Whole; a readable Invalid if it does not."""
    try:
        return _WHOLE.validate_python(value.strip())
    except ValidationError as exc:
        raise Invalid(f"{field} {plain(exc.errors()[0])}") from None


def model_name(value: str) -> str:
    """A model name from a form, checked like the API's `model` field."""
    try:
        return _MODEL.validate_python(value)
    except ValidationError as exc:
        raise Invalid(f"model {plain(exc.errors()[0])}") from None


def as_whole(value: str) -> int | None:
    """The Whole `value` spells, or None if it spells none (for text that may be a number or words)."""
    try:
        return _WHOLE.validate_python(value)
    except ValidationError:
        return None


def maybe_whole(value: str, field: str) -> int | None:
    """Like whole(), but a blank field is None."""
    return whole(value, field) if value.strip() else None


def number(value: str, field: str) -> float:
    """A form field that must hold a number (finite or not: the model's own checks say which)."""
    try:
        return float(value.strip())
    except ValueError:
        raise Invalid(f"{field} must be a number, got {value[:40]!r}") from None


def without_controls(text: str) -> str:
    """The text less control characters (NUL, escapes): what a search index can be asked for."""
    return "".join(c if unicodedata.category(c)[0] != "C" else " " for c in text)


# Pydantic's error types in the words a user reads next to a field.
_PLAIN = {
    "missing": "is required",
    "extra_forbidden": "is not a field this request takes",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "json_invalid": "is not valid JSON",
}


def plain(error: Any) -> str:
    """One pydantic error (a dict from `errors()`) as words: 'must be at most 200 characters'."""
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    if kind in _PLAIN:
        return _PLAIN[kind]
    if kind == "less_than":
        return f"must be less than {ctx.get('lt')}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}"
    if kind == "greater_than":
        return f"must be more than {ctx.get('gt')}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return (
            "must not be empty" if ctx.get("min_length") == 1 else f"needs {ctx.get('min_length')} characters"
        )
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} items"
    if kind == "literal_error":
        # Choices that are enum members (run kinds) read as their values: 'melbo', not <Kind.MELBO: ...>.
        return "must be one of " + re.sub(r"<\w+\.\w+: ('[^']*')>", r"\1", str(ctx.get("expected")))
    if kind == "value_error":
        return str(error.get("msg", "")).removeprefix("Value error, ")
    return str(error.get("msg", "is not valid")).replace("Input should be", "should be")


def where(error: Any) -> str:
    """The field an error is about, as a dotted path without the 'body' / 'query' prefix."""
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "form", "header")]
    return ".".join(loc)


def describe(errors: list[Any]) -> str:
    """Every error of a failed validation, in words: 'seed: must be less than ...; title: ...'."""
    return "; ".join(f"{where(e)}: {plain(e)}" if where(e) else plain(e) for e in errors)


def numbers(text: str, field: str) -> list[float]:
    """Numbers from a form field, separated by commas or spaces; a readable Invalid otherwise."""
    words = text.replace(",", " ").split()
    if not words:
        raise Invalid(f"{field}: give at least one number")
    out = []
    for word in words:
        try:
            out.append(float(word))
        except ValueError:
            raise Invalid(f"{field}: {word[:40]!r} is not a number") from None
    return out
