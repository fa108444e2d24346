"""Steered chat: conversations, their steering panel and settings, their messages and exports.

Each turn is answered in every shown pane (the steered model, and the unsteered one unless
hidden), each pane with its own history; app/chat/hub.py runs the replies while they stream.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import store
from app.errors import Invalid, NotFound
from app.executor.protocol import Render
from app.fields import ModelName, Text, Title, Whole
from app.models import Conversation, Message, Vector, now
from app.service import Service

PANES = ("steered", "unsteered")
DEFAULT_SETTINGS = {"seed": 0, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 96, "show_unsteered": True}


class Term(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vector_id: Whole
    scale: float = 1.0
    enabled: bool = True


class ChatSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: Whole = 0
    temperature: float = Field(0.7, ge=0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: Whole = Field(96, ge=1)
    show_unsteered: bool = True


class SteeringUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    terms: list[Term] = Field(
        default_factory=list, max_length=64, description="Vectors with their scales; all at one block."
    )
    settings: ChatSettings | None = None


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vector_id: Whole | None = Field(None, description="Start steered by this vector at scale 1.")
    model: ModelName | None = Field(None, description="Without a vector: the model to chat with.")
    title: Title = ""


class MessageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: Text


def get(session: Session, conversation_id: int) -> Conversation:
    conversation = session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound(f"no conversation {conversation_id}")
    return conversation


def check_terms(session: Session, model_name: str, terms: list[Term]) -> list[dict[str, Any]]:
    """The panel's terms, checked: known vectors of this model, finite scales, the vectors at one
    block, and at most one steering adapter switched on (it acts at its own block, beside them)."""
    out, blocks, adapters = [], set(), []
    for term in terms:
        if not math.isfinite(term.scale):
            raise Invalid(f"the scale of vector {term.vector_id} must be a finite number, got {term.scale}")
        vector = session.get(Vector, term.vector_id)
        if vector is None:
            raise Invalid(f"no vector {term.vector_id}")
        if vector.run.model_name != model_name:
            raise Invalid(
                f"vector {vector.id} belongs to model {vector.run.model_name!r}, not {model_name!r}"
            )
        if term.enabled and vector.is_adapter:
            adapters.append(vector.id)
        elif term.enabled:
            blocks.add(vector.block)
        out.append(
            {
                "vector_id": vector.id,
                "scale": term.scale,
                "enabled": term.enabled,
                "block": vector.block,
                "norm": vector.norm,
                "adapter": vector.is_adapter,
            }
        )
    if len(adapters) > 1:
        raise Invalid(
            "a chat steers with at most one adapter at a time (with any vectors); "
            f"{' and '.join(f'#{i}' for i in adapters)} are both adapters: switch one off"
        )
    if len(blocks) > 1:
        raise Invalid(f"vectors steering together must share a block; these are at blocks {sorted(blocks)}")
    return out


def create(service: Service, body: ConversationCreate) -> int:
    if body.vector_id is None and body.model:
        # Like a run: a model the worker cannot load is refused now, not at every message.
        service.ask(Render(model=body.model, prompts=[]))
    with service.db.session() as session:
        terms: list[dict[str, Any]] = []
        title = body.title or "a new conversation"
        if body.vector_id is not None:
            vector = store.get_vector(session, body.vector_id)
            title = body.title or f"vector #{vector.id} (run #{vector.run_id})"
            model_name = vector.run.model_name
            if body.model and body.model != model_name:
                raise Invalid(f"vector {vector.id} belongs to model {model_name!r}, not {body.model!r}")
            terms = check_terms(session, model_name, [Term(vector_id=vector.id)])
        else:
            model_name = body.model or service.settings.default_model
        conversation = Conversation(
            title=title, model_name=model_name, steering=terms, settings=dict(DEFAULT_SETTINGS)
        )
        session.add(conversation)
        session.flush()
        return conversation.id


def update_steering(service: Service, conversation_id: int, body: SteeringUpdate) -> None:
    """Change the panel; it applies from the next reply on (earlier messages keep theirs)."""
    with service.db.session() as session:
        conversation = get(session, conversation_id)
        terms = check_terms(session, conversation.model_name, body.terms)
        if body.settings is not None:
            if body.settings.max_new_tokens > service.settings.max_new_tokens:
                raise Invalid(f"max new tokens must be at most {service.settings.max_new_tokens}")
            conversation.settings = body.settings.model_dump()
        conversation.steering = terms
        conversation.updated_at = now()


def history(
    session: Session, conversation_id: int, pane: str, *, before_turn: int | None = None
) -> list[dict[str, str]]:
    """A pane's conversation as the model sees it: each turn's message and its newest finished
    reply (a regenerated turn keeps its earlier replies on the page, not in the history)."""
    query = select(Message).where(Message.conversation_id == conversation_id, Message.pane == pane)
    if before_turn is not None:
        query = query.where(Message.turn < before_turn)
    messages = list(session.scalars(query.order_by(Message.id)))
    answer = {
        m.turn: m.id for m in messages if m.role == "assistant" and m.finish_reason not in ("", "error")
    }
    return [
        {"role": m.role, "content": m.content}
        for m in messages
        if m.role == "user" or answer.get(m.turn) == m.id
    ]


def superseded(messages: list[Message]) -> set[int]:
    """Assistant replies answered again later in the same pane and turn (shown as earlier replies)."""
    newest: dict[tuple[str, int], int] = {}
    for m in messages:
        if m.role == "assistant":
            newest[(m.pane, m.turn)] = max(m.id, newest.get((m.pane, m.turn), 0))
    return {m.id for m in messages if m.role == "assistant" and newest[(m.pane, m.turn)] != m.id}


def user_message(conversation_id: int, pane: str, content: str, turn: int) -> Message:
    return Message(
        conversation_id=conversation_id,
        pane=pane,
        role="user",
        content=content,
        turn=turn,
        steering={},
        sampling={},
    )


def steering_record(
    session: Session, terms: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[Any], int | None, dict[str, Any] | None]:
    """What a reply records, and what the worker needs: the vectors' (values, scale) pairs and
    their block, and the adapter's payload with its scale (None without one)."""
    active = [(t, store.get_vector(session, t["vector_id"])) for t in terms if t["enabled"]]
    vectors = [(t, v) for t, v in active if not v.is_adapter]
    pairs = [(v.values, t["scale"]) for t, v in vectors]
    block = vectors[0][1].block if vectors else None
    record: dict[str, Any] = {
        "block": block,
        "terms": [{"vector_id": v.id, "scale": t["scale"]} for t, v in vectors],
    }
    adapter = None
    for t, v in active:
        if v.is_adapter:
            adapter = {**store.adapter_payload(v), "scale": float(t["scale"])}
            record["adapter"] = {"vector_id": v.id, "scale": t["scale"], "block": v.block}
    return record, pairs, block, adapter


def messages_out(session: Session, conversation_id: int) -> list[dict[str, Any]]:
    rows = list(
        session.scalars(
            select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id)
        )
    )
    earlier = superseded(rows)
    return [
        {
            k: getattr(m, k)
            for k in (
                "id",
                "pane",
                "role",
                "content",
                "turn",
                "steering",
                "sampling",
                "n_tokens",
                "finish_reason",
            )
        }
        | {"created_at": m.created_at.isoformat() + "Z", "superseded": m.id in earlier}
        for m in rows
    ]


def conversation_out(session: Session, conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "title": conversation.title,
        "model": conversation.model_name,
        "steering": conversation.steering,
        "settings": {**DEFAULT_SETTINGS, **conversation.settings},
        "created_at": conversation.created_at.isoformat() + "Z",
        "updated_at": conversation.updated_at.isoformat() + "Z",
        "messages": messages_out(session, conversation.id),
    }


def markdown(data: dict[str, Any]) -> str:
    """A conversation as Markdown: each turn's message, then each pane's reply with its steering."""
    lines = [f"# {data['title']}", "", f"Model: {data['model']}", ""]
    for m in data["messages"]:
        if m["role"] == "user":
            if m["pane"] == "steered":
                lines += [f"## You (turn {m['turn']})", "", m["content"], ""]
            continue
        terms = ", ".join(f"#{t['vector_id']} × {t['scale']:g}" for t in m["steering"].get("terms", []))
        where = f" at block {m['steering']['block']}" if m["steering"].get("block") is not None else ""
        if m["steering"].get("adapter"):
            a = m["steering"]["adapter"]
            terms, where = terms + where, ""
            adapter = f"adapter #{a['vector_id']} × {a['scale']:g} at block {a['block']}"
            terms = f"{terms}, {adapter}" if terms else adapter
        earlier = "earlier reply, " if m.get("superseded") else ""
        lines += [
            f"### {m['pane']} ({earlier}{terms or 'no steering'}{where}; seed {m['sampling'].get('seed')}, "
            f"temperature {m['sampling'].get('temperature')})",
            "",
            m["content"],
            "",
        ]
    return "\n".join(lines)
