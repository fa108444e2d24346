"""Labels: the project's label set, labels toggled on vectors or single generations, notes, facets."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.errors import Conflict, Invalid, NotFound
from app.fields import MAX_NAME, Text, Whole, without_controls
from app.models import Generation, Label, Labeling, LabelSet, Note, Vector

COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


class LabelEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=MAX_NAME)
    colour: str = "#888888"
    key: int | None = Field(None, ge=1, le=9, description="Keyboard shortcut 1-9 in the labeling queue.")
    description: str = Field("", max_length=2000)


class Toggle(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label_id: Whole
    vector_id: Whole | None = None
    generation_id: Whole | None = None
    on: bool | None = Field(None, description="Set the label on or off; omitted: flip it.")


class NoteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vector_id: Whole
    text: Text


def label_set(session: Session) -> LabelSet:
    """The project's label set (the migrations create one with starting labels)."""
    found = session.scalars(select(LabelSet).order_by(LabelSet.id)).first()
    if found is None:
        found = LabelSet(name="default")
        session.add(found)
        session.flush()
    return found


def all_labels(session: Session) -> list[Label]:
    return list(
        session.scalars(
            select(Label).where(Label.label_set_id == label_set(session).id).order_by(Label.key, Label.name)
        )
    )


def save_label(session: Session, edit: LabelEdit, label_id: int | None = None) -> Label:
    if not COLOUR.match(edit.colour):
        raise Invalid(f"colour must look like #1a2b3c, got {edit.colour!r}")
    labels = all_labels(session)
    label = next((x for x in labels if x.id == label_id), None)
    if label_id is not None and label is None:
        raise NotFound(f"no label {label_id}")
    for other in labels:
        if other.id != label_id and other.name == edit.name.strip():
            raise Invalid(f"there is already a label called {edit.name!r}")
        if other.id != label_id and edit.key is not None and other.key == edit.key:
            raise Invalid(f"key {edit.key} already belongs to {other.name!r}")
    if label is None:
        label = Label(label_set_id=label_set(session).id)
        session.add(label)
    label.name, label.colour, label.key = edit.name.strip(), edit.colour, edit.key
    label.description = edit.description
    session.flush()
    return label


def delete_label(session: Session, label_id: int) -> None:
    if session.get(Label, label_id) is None:
        raise NotFound(f"no label {label_id}")
    session.execute(delete(Label).where(Label.id == label_id))


def toggle(session: Session, body: Toggle, author: str) -> bool:
    """Put the label on (or take it off) a vector or a generation; the state after."""
    if (body.vector_id is None) == (body.generation_id is None):
        raise Invalid("label either a vector or a generation")
    if session.get(Label, body.label_id) is None:
        raise Invalid(f"no label {body.label_id}")
    if body.vector_id is not None and session.get(Vector, body.vector_id) is None:
        raise Invalid(f"no vector {body.vector_id}")
    if body.generation_id is not None and session.get(Generation, body.generation_id) is None:
        raise Invalid(f"no generation {body.generation_id}")
    where = [
        Labeling.label_id == body.label_id,
        Labeling.vector_id.is_(None) if body.vector_id is None else Labeling.vector_id == body.vector_id,
        Labeling.generation_id.is_(None)
        if body.generation_id is None
        else Labeling.generation_id == body.generation_id,
    ]
    present = session.scalars(select(Labeling).where(*where)).first() is not None
    want = (not present) if body.on is None else body.on
    if want and not present:
        session.add(
            Labeling(
                label_id=body.label_id,
                vector_id=body.vector_id,
                generation_id=body.generation_id,
                author=author,
            )
        )
    elif present and not want:
        session.execute(delete(Labeling).where(*where))
    return want


def add_note(session: Session, *, vector_id: int, text: str, author: str) -> Note:
    if session.get(Vector, vector_id) is None:
        raise Invalid(f"no vector {vector_id}")
    if not text.strip():
        raise Invalid("the note is empty")
    note = Note(vector_id=vector_id, text=text.strip(), author=author)
    session.add(note)
    session.flush()
    return note


def facets(session: Session, run_id: int) -> list[tuple[Label, int]]:
    """Each label with the number of the run's vectors carrying it (labels with none included)."""
    counts = dict(
        session.execute(
            select(Labeling.label_id, func.count(func.distinct(Labeling.vector_id)))
            .join(Vector, Labeling.vector_id == Vector.id)
            .where(Vector.run_id == run_id)
            .group_by(Labeling.label_id)
        ).all()
    )
    return [(label, int(counts.get(label.id, 0))) for label in all_labels(session)]


def labelled_count(session: Session, vector_ids: list[int]) -> int:
    if not vector_ids:
        return 0
    return int(
        session.scalar(
            select(func.count(func.distinct(Labeling.vector_id))).where(Labeling.vector_id.in_(vector_ids))
        )
        or 0
    )


def vector_label_ids(session: Session, vector_id: int) -> set[int]:
    return set(session.scalars(select(Labeling.label_id).where(Labeling.vector_id == vector_id)))


def author_of(cookie: str | None) -> str:
    """The name a user set once (kept in a cookie); labels record it."""
    name = (cookie or "").strip()[:MAX_NAME]
    if not name:
        raise Conflict("set your name first (it is recorded with every label)")
    return name


def fts_query(text: str) -> str:
    """User words as an FTS5 query: each word a quoted phrase, all required (no syntax errors)."""
    words = [w.replace('"', '""') for w in without_controls(text).split()]
    return " ".join(f'"{w}"' for w in words)


def notes_of(session: Session, vector_id: int) -> list[Any]:
    return list(session.scalars(select(Note).where(Note.vector_id == vector_id).order_by(Note.id)))
