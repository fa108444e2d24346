"""The labels API: the label set, labels put on (or off) vectors and generations, notes."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import AuthorCookie, ServiceDep, SessionDep
from app.labels import labelling
from app.responses import LabelingOut, LabelOut, NoteOut

router = APIRouter(prefix="/api", tags=["labels"])


@router.get("/labels", summary="The project's labels")
def list_labels(session: SessionDep) -> list[LabelOut]:
    return [LabelOut.model_validate(x) for x in labelling.all_labels(session)]


@router.post("/labelings", summary="Put a label on (or off) a vector or a generation")
def toggle_label(body: labelling.Toggle, service: ServiceDep, author: AuthorCookie = None) -> LabelingOut:
    name = labelling.author_of(author)
    with service.db.session() as session:
        on = labelling.toggle(session, body, name)
    return LabelingOut(
        label_id=body.label_id, vector_id=body.vector_id, generation_id=body.generation_id, on=on
    )


@router.post("/notes", summary="A note on a vector")
def add_note(body: labelling.NoteCreate, service: ServiceDep, author: AuthorCookie = None) -> NoteOut:
    name = labelling.author_of(author)
    with service.db.session() as session:
        note = labelling.add_note(session, vector_id=body.vector_id, text=body.text, author=name)
        return NoteOut.model_validate(note)
