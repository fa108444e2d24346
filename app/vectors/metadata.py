"""What an imported vector file may say about its vectors, checked field by field.

A file's metadata is untrusted input like any request: its prompts become the run's prompts and its
blocks say where the vectors steer, so they meet the API's own limits. Our exports write the fields
named here; other tools' files carry a few strings of their own, which are kept if they are short.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import Invalid
from app.fields import MAX_NAME, MAX_TEXT, ModelName, Name, Prompts, Whole, describe

MAX_ITEMS = 1024  # vectors or blocks listed in one file
MAX_OTHER_FIELDS = 64


class VectorMetadata(BaseModel):
    """The fields a steerscope export writes for each vector (all optional: other tools write none)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    steerscope_vector_id: Whole | None = None
    run_id: Whole | None = None
    run_kind: Name | None = None
    index: Whole | None = None
    model: ModelName | None = None
    block: Whole | None = None
    blocks: list[Whole] | None = Field(None, max_length=MAX_ITEMS)
    norm: float | None = None
    objective: float | None = None
    kl: float | None = None
    prompts: Prompts = []
    labels: list[Name] = Field([], max_length=MAX_NAME)

    @model_validator(mode="after")
    def short_other_fields(self) -> VectorMetadata:
        """Fields we do not know are kept only as short plain values (a foreign file's strings)."""
        other = self.model_extra or {}
        if len(other) > MAX_OTHER_FIELDS:
            raise ValueError(f"has {len(other)} fields we do not know; at most {MAX_OTHER_FIELDS} are kept")
        for key, value in other.items():
            if len(key) > MAX_NAME:
                raise ValueError(f"has a field name longer than {MAX_NAME} characters")
            if not isinstance(value, bool | int | float | str | type(None)):
                raise ValueError(f"field {key[:40]!r} must be text, a number or true/false")
            if isinstance(value, str) and len(value) > MAX_TEXT:
                raise ValueError(f"field {key[:40]!r} must be at most {MAX_TEXT} characters")
        return self


class FileMetadata(VectorMetadata):
    """A whole run's file also lists each vector's own metadata."""

    vectors: list[VectorMetadata] | None = Field(None, max_length=MAX_ITEMS)


def check(metadata: Any, filename: str) -> dict[str, Any]:
    """The metadata if every field is within limits; else Invalid naming the field."""
    try:
        checked = FileMetadata.model_validate(metadata if isinstance(metadata, dict) else {})
    except ValidationError as exc:
        raise Invalid(f"{filename}: the metadata is refused: {describe(exc.errors())}") from None
    return checked.model_dump(mode="json", exclude_unset=True)
