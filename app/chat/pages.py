"""Chat pages: the list of conversations, and a conversation with its steering panel and two panes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select

from app.chat import conversations
from app.deps import FormDep, ServiceDep, SessionDep
from app.errors import AppError
from app.fields import Whole, as_whole, describe, maybe_whole, number, whole
from app.models import Conversation, Label, Labeling, Message, Run, Vector
from app.runs.gallery import matching_vectors
from app.service import Service
from app.templating import render

router = APIRouter(include_in_schema=False)
SEARCH_LIMIT = 12


@router.get("/chat", response_class=HTMLResponse)
def conversation_list(request: Request, session: SessionDep) -> HTMLResponse:
    rows = session.scalars(select(Conversation).order_by(Conversation.updated_at.desc()).limit(100)).all()
    return render(request, "chat/index.html", {"conversations": rows})


@router.post("/chat/new")
def new_conversation(request: Request, service: ServiceDep, form: FormDep) -> Response:
    vector = str(form.get("vector_id", "")).strip()
    body = conversations.ConversationCreate(
        vector_id=maybe_whole(vector, "vector_id"), model=str(form.get("model", "")) or None
    )
    conversation_id = conversations.create(service, body)
    if request.headers.get("HX-Request"):  # a gallery card's chat button
        return Response(status_code=204, headers={"HX-Redirect": f"/chat/{conversation_id}"})
    return RedirectResponse(f"/chat/{conversation_id}", status_code=303)


def panel_context(session: Any, conversation: Conversation) -> dict[str, Any]:
    terms = []
    for term in conversation.steering:
        vector = session.get(Vector, term["vector_id"])
        terms.append({**term, "vector": vector})
    return {
        "conversation": conversation,
        "terms": terms,
        "settings": {**conversations.DEFAULT_SETTINGS, **conversation.settings},
    }


def panes_context(session: Any, conversation: Conversation) -> dict[str, Any]:
    messages = session.scalars(
        select(Message).where(Message.conversation_id == conversation.id).order_by(Message.id)
    ).all()
    return {
        **panel_context(session, conversation),
        "panes": {pane: [m for m in messages if m.pane == pane] for pane in conversations.PANES},
        "earlier": conversations.superseded(list(messages)),
    }


@router.get("/chat/{conversation_id}", response_class=HTMLResponse)
def show(conversation_id: Whole, request: Request, session: SessionDep) -> HTMLResponse:
    conversation = conversations.get(session, conversation_id)
    return render(request, "chat/show.html", panes_context(session, conversation))


@router.get("/chat/{conversation_id}/panes", response_class=HTMLResponse)
def panes(conversation_id: Whole, request: Request, session: SessionDep) -> HTMLResponse:
    """Both panes as stored: what the page shows in place once a reply has ended."""
    conversation = conversations.get(session, conversation_id)
    return render(request, "chat/_panes.html", panes_context(session, conversation))


def apply_panel(
    request: Request,
    service: Service,
    conversation_id: Whole,
    update: conversations.SteeringUpdate | None,
    error: str = "",
) -> HTMLResponse:
    """Apply a panel change (unless reading the form failed already) and render the panel anew."""
    if update is not None:
        try:
            conversations.update_steering(service, conversation_id, update)
        except AppError as exc:
            error = exc.message
    with service.db.session() as session:
        context = {**panel_context(session, conversations.get(session, conversation_id)), "error": error}
        return render(request, "chat/_panel.html", context, status_code=422 if error else 200)


@router.post("/chat/{conversation_id}/steering", response_class=HTMLResponse)
def steering(conversation_id: Whole, request: Request, service: ServiceDep, form: FormDep) -> HTMLResponse:
    """The panel form: terms as parallel lists, settings as fields."""
    ids, scales = form.getlist("vector_id"), form.getlist("scale")
    enabled = {str(v) for v in form.getlist("enabled")}
    removed = str(form.get("drop", ""))  # not "remove": a control by that name would hide form.remove()
    try:
        terms = [
            conversations.Term(
                vector_id=whole(str(i), "vector_id"), scale=number(str(s), "scale"), enabled=str(i) in enabled
            )
            for i, s in zip(ids, scales, strict=True)
            if str(i) != removed
        ]
        settings = conversations.ChatSettings(
            seed=whole(str(form.get("seed", "") or "0"), "seed"),
            temperature=number(str(form.get("temperature", "") or "0.7"), "temperature"),
            max_new_tokens=whole(str(form.get("max_new_tokens", "") or "96"), "max new tokens"),
            show_unsteered=form.get("show_unsteered") is not None,
        )
    except ValidationError as exc:
        return apply_panel(request, service, conversation_id, None, describe(exc.errors()))
    except AppError as exc:
        return apply_panel(request, service, conversation_id, None, exc.message)
    except ValueError:  # the lists of ids and scales differ in length: not a form of ours
        return apply_panel(request, service, conversation_id, None, "every vector needs one scale")
    return apply_panel(
        request, service, conversation_id, conversations.SteeringUpdate(terms=terms, settings=settings)
    )


@router.post("/chat/{conversation_id}/add", response_class=HTMLResponse)
def add_vector(conversation_id: Whole, request: Request, service: ServiceDep, form: FormDep) -> HTMLResponse:
    with service.db.session() as session:
        steering = conversations.get(session, conversation_id).steering
    terms = [conversations.Term(**{k: t[k] for k in ("vector_id", "scale", "enabled")}) for t in steering]
    try:
        added = whole(str(form.get("vector_id", "")), "vector_id")
    except AppError as exc:
        return apply_panel(request, service, conversation_id, None, exc.message)
    if added not in {t.vector_id for t in terms}:
        terms.append(conversations.Term(vector_id=added))
    return apply_panel(request, service, conversation_id, conversations.SteeringUpdate(terms=terms))


@router.get("/chat/{conversation_id}/search", response_class=HTMLResponse)
def search(conversation_id: Whole, request: Request, session: SessionDep, q: str = "") -> HTMLResponse:
    """Find vectors of the conversation's model by id (#12), run (run:5), label (label:refusal) or
    by words in their completions."""
    conversation = conversations.get(session, conversation_id)
    q = q.strip()
    query = select(Vector).join(Run, Vector.run_id == Run.id).where(Run.model_name == conversation.model_name)
    if not q:
        found: list[Vector] = []
    elif (vector_id := as_whole(q.removeprefix("#"))) is not None:
        found = list(session.scalars(query.where(Vector.id == vector_id)))
    elif q.startswith("run:") and (run_id := as_whole(q[4:].strip())) is not None:
        found = list(
            session.scalars(query.where(Vector.run_id == run_id).order_by(Vector.index).limit(SEARCH_LIMIT))
        )
    elif q.startswith("label:"):
        labelled = (
            select(Labeling.vector_id)
            .join(Label, Labeling.label_id == Label.id)
            .where(Label.name == q[6:].strip())
        )
        found = list(session.scalars(query.where(Vector.id.in_(labelled)).limit(SEARCH_LIMIT)))
    else:
        found = list(session.scalars(query.where(Vector.id.in_(matching_vectors(q))).limit(SEARCH_LIMIT)))
    return render(request, "chat/_search.html", {"conversation": conversation, "found": found, "q": q})
