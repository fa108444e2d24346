"""Conversations over HTTP: the steering panel, messages, the reply stream, stop, regenerate, export."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from sqlalchemy import select

from app.chat import conversations
from app.chat.hub import ChatHub
from app.deps import ServiceDep, SessionDep
from app.fields import Whole
from app.generations.sampling import sse
from app.models import Conversation
from app.responses import ConversationItem, ConversationOut, Stopped, Turn

router = APIRouter(prefix="/api/conversations", tags=["chat"])
KEEPALIVE_S = 15.0


def hub(request: Request) -> ChatHub:
    value: ChatHub = request.app.state.chat
    return value


@router.post("", status_code=201, summary="Start a conversation (optionally steered by a vector at scale 1)")
def create_conversation(body: conversations.ConversationCreate, service: ServiceDep) -> ConversationOut:
    conversation_id = conversations.create(service, body)
    with service.db.session() as session:
        return ConversationOut.model_validate(
            conversations.conversation_out(session, conversations.get(session, conversation_id))
        )


@router.get("", summary="Conversations, most recently active first")
def list_conversations(
    session: SessionDep, limit: Annotated[Whole, Query(ge=1, le=500)] = 50, offset: Whole = 0
) -> list[ConversationItem]:
    rows = session.scalars(
        select(Conversation).order_by(Conversation.updated_at.desc()).limit(limit).offset(offset)
    ).all()
    return [
        ConversationItem(id=c.id, title=c.title, model=c.model_name, updated_at=c.updated_at) for c in rows
    ]


@router.get("/{conversation_id}")
def read_conversation(conversation_id: Whole, session: SessionDep) -> ConversationOut:
    return ConversationOut.model_validate(
        conversations.conversation_out(session, conversations.get(session, conversation_id))
    )


@router.put(
    "/{conversation_id}/steering", summary="Set the steering panel and settings (from the next reply on)"
)
def set_steering(
    conversation_id: Whole, body: conversations.SteeringUpdate, service: ServiceDep
) -> ConversationOut:
    conversations.update_steering(service, conversation_id, body)
    with service.db.session() as session:
        return ConversationOut.model_validate(
            conversations.conversation_out(session, conversations.get(session, conversation_id))
        )


@router.post(
    "/{conversation_id}/messages", status_code=202, summary="Send a message; both panes start replying"
)
def send_message(conversation_id: Whole, body: conversations.MessageCreate, request: Request) -> Turn:
    return Turn(turn=hub(request).send(conversation_id, body.content))


@router.post("/{conversation_id}/regenerate", status_code=202, summary="Answer the last message again")
def regenerate(conversation_id: Whole, request: Request) -> Turn:
    return Turn(turn=hub(request).regenerate(conversation_id))


@router.post("/{conversation_id}/stop", summary="Stop the reply in progress (what was written is kept)")
def stop(conversation_id: Whole, request: Request) -> Stopped:
    return Stopped(stopped=hub(request).stop(conversation_id))


@router.get(
    "/{conversation_id}/stream", summary="SSE: the reply in progress (text so far, then tokens, then done)"
)
def stream(conversation_id: Whole, request: Request, service: ServiceDep) -> StreamingResponse:
    with service.db.session() as session:
        conversations.get(session, conversation_id)
    chats = hub(request)

    async def events() -> AsyncIterator[str]:
        sub, snapshot = chats.follow(conversation_id)
        with sub:
            yield sse("snapshot", {"live": snapshot is not None, **(snapshot or {"panes": {}})})
            if snapshot is None:
                return
            chats.watch(conversation_id, +1)
            try:
                while not await request.is_disconnected():
                    event = await sub.next(KEEPALIVE_S)
                    if event is None and sub.closed:
                        return  # the server is shutting down; the page reconnects to the next one
                    if event is None:
                        yield ": keep-alive\n\n"
                        continue
                    yield sse(event["type"], {k: v for k, v in event.items() if k != "type"})
                    if event["type"] == "done":
                        return
            finally:
                chats.watch(conversation_id, -1)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/{conversation_id}/export", summary="The conversation as JSON or Markdown", response_model=None)
def export(conversation_id: Whole, session: SessionDep, format: Literal["json", "md"] = "json") -> Response:
    data = conversations.conversation_out(session, conversations.get(session, conversation_id))
    name = f"conversation-{conversation_id}"
    if format == "md":
        return PlainTextResponse(
            conversations.markdown(data),
            media_type="text/markdown",
            headers={"Content-Disposition": f'attachment; filename="{name}.md"'},
        )
    return Response(
        json.dumps(data, indent=2),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{name}.json"'},
    )
