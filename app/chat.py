"""Steered chat: conversations, their steering panel, and replies streamed into two panes.

Each turn sends one chat request to the worker with a row per pane (the steered model, and the
unsteered one unless hidden); the worker decodes the rows of every conversation that is replying
in one batch. Replies live on in the server while they stream, so a reloaded page picks up the
text so far; a stream nobody watches any more is stopped after a short grace period.
"""

from __future__ import annotations

import math
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app import store
from app.errors import Conflict, Invalid, NotFound
from app.models import Conversation, Message, Vector, now
from app.service import Service

PANES = ("steered", "unsteered")
GRACE_S = 3.0  # a reply whose last watcher left is stopped after this long (a reload comes back sooner)
DEFAULT_SETTINGS = {"seed": 0, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 96, "show_unsteered": True}


class Term(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vector_id: int
    scale: float = 1.0
    enabled: bool = True


class ChatSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = Field(0, ge=0, lt=2**63)
    temperature: float = Field(0.7, ge=0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1)
    show_unsteered: bool = True


class SteeringUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    terms: list[Term] = Field(
        default_factory=list, description="Vectors with their scales; all at one block."
    )
    settings: ChatSettings | None = None


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vector_id: int | None = Field(None, description="Start steered by this vector at scale 1.")
    model: str | None = Field(None, description="Without a vector: the model to chat with.")
    title: str = ""


class MessageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: str


def get(session: Session, conversation_id: int) -> Conversation:
    conversation = session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound(f"no conversation {conversation_id}")
    return conversation


def check_terms(session: Session, model_name: str, terms: list[Term]) -> list[dict[str, Any]]:
    """The panel's terms, checked: known vectors of this model, finite scales, one block."""
    out, blocks = [], set()
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
        if term.enabled:
            blocks.add(vector.block)
        out.append(
            {
                "vector_id": vector.id,
                "scale": term.scale,
                "enabled": term.enabled,
                "block": vector.block,
                "norm": vector.norm,
            }
        )
    if len(blocks) > 1:
        raise Invalid(f"vectors steering together must share a block; these are at blocks {sorted(blocks)}")
    return out


def create(service: Service, body: ConversationCreate) -> int:
    with service.db.session() as session:
        terms: list[dict[str, Any]] = []
        if body.vector_id is not None:
            vector = store.get_vector(session, body.vector_id)
            model_name = vector.run.model_name
            terms = check_terms(session, model_name, [Term(vector_id=vector.id)])
        else:
            model_name = body.model or service.settings.default_model
        title = body.title or (f"vector #{body.vector_id}" if body.vector_id else "chat")
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
    query = select(Message).where(Message.conversation_id == conversation_id, Message.pane == pane)
    if before_turn is not None:
        query = query.where(Message.turn < before_turn)
    return [
        {"role": m.role, "content": m.content}
        for m in session.scalars(query.order_by(Message.id))
        if m.role == "user" or m.finish_reason not in ("", "error")
    ]


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


def _steering_record(
    session: Session, terms: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[Any], int | None]:
    """What a reply records, and the (values, scale) pairs and block the worker needs."""
    active = [t for t in terms if t["enabled"]]
    pairs = [(store.get_vector(session, t["vector_id"]).values, t["scale"]) for t in active]
    block = active[0]["block"] if active else None
    record = {"block": block, "terms": [{"vector_id": t["vector_id"], "scale": t["scale"]} for t in active]}
    return record, pairs, block


@dataclass
class Live:
    conversation_id: int
    rid: str
    message_ids: list[int]  # one assistant message per row
    panes: list[str]
    texts: list[str]
    watchers: int = 0


class ChatHub:
    """Replies in progress: started here, fed by worker events, written to the messages table."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.lock = threading.Lock()
        self.live: dict[int, Live] = {}
        service.recorder.chat_events = self.on_event

    def recover(self) -> None:
        """Replies that were streaming when the server stopped will not finish: say so."""
        with self.service.db.session() as session:
            session.execute(
                update(Message)
                .where(Message.role == "assistant", Message.finish_reason == "")
                .values(finish_reason="interrupted")
            )

    def _rows(
        self, session: Session, conversation: Conversation, turn: int, new: str | None
    ) -> tuple[list[dict[str, Any]], list[str], dict[str, Any], dict[str, Any]]:
        settings = {**DEFAULT_SETTINGS, **conversation.settings}
        sampling = {k: settings[k] for k in ("seed", "temperature", "top_p", "max_new_tokens")}
        record, pairs, block = _steering_record(session, conversation.steering)
        panes = list(PANES if settings["show_unsteered"] else PANES[:1])
        rows = []
        for pane in panes:
            messages = history(session, conversation.id, pane, before_turn=turn)
            messages.append(
                {
                    "role": "user",
                    "content": new if new is not None else self._user_text(session, conversation.id, turn),
                }
            )
            steered = pane == "steered" and bool(pairs)
            rows.append(
                {
                    "messages": messages,
                    "terms": pairs if steered else [],
                    "block": block if steered else None,
                    **sampling,
                }
            )
        return rows, panes, record, sampling

    @staticmethod
    def _user_text(session: Session, conversation_id: int, turn: int) -> str:
        message = session.scalars(
            select(Message).where(
                Message.conversation_id == conversation_id, Message.turn == turn, Message.role == "user"
            )
        ).first()
        if message is None:
            raise Conflict("there is no message to answer yet")
        return message.content

    def send(self, conversation_id: int, content: str) -> int:
        """Store the user's message in every pane and start the replies; the turn number."""
        if not content.strip():
            raise Invalid("the message is empty")
        self._idle(conversation_id)
        with self.service.db.session() as session:
            conversation = get(session, conversation_id)
            turn = (
                session.scalar(
                    select(func.max(Message.turn)).where(Message.conversation_id == conversation_id)
                )
                or 0
            ) + 1
            rows, panes, record, sampling = self._rows(session, conversation, turn, content)
            model = conversation.model_name
        # The worker checks the rows (context length, widths) before anything is stored.
        self.service.ask({"type": "check_chat", "model": model, "rows": rows})
        with self.service.db.session() as session:
            conversation = get(session, conversation_id)
            for pane in panes:
                session.add(user_message(conversation_id, pane, content, turn))
            ids = self._placeholders(session, conversation, panes, turn, record, sampling)
        self._start(conversation_id, model, rows, panes, ids)
        return turn

    def regenerate(self, conversation_id: int) -> int:
        """Answer the last message again with the panel and settings as they are now."""
        self._idle(conversation_id)
        with self.service.db.session() as session:
            conversation = get(session, conversation_id)
            turn = session.scalar(
                select(func.max(Message.turn)).where(Message.conversation_id == conversation_id)
            )
            if not turn:
                raise Conflict("there is no message to answer yet")
            rows, panes, record, sampling = self._rows(session, conversation, turn, None)
            model = conversation.model_name
        self.service.ask({"type": "check_chat", "model": model, "rows": rows})
        with self.service.db.session() as session:
            conversation = get(session, conversation_id)
            session.execute(
                delete(Message).where(
                    Message.conversation_id == conversation_id,
                    Message.turn == turn,
                    Message.role == "assistant",
                )
            )
            for pane in panes:  # a pane shown again after being hidden gets the user's message too
                exists = session.scalar(
                    select(func.count())
                    .select_from(Message)
                    .where(
                        Message.conversation_id == conversation_id, Message.turn == turn, Message.pane == pane
                    )
                )
                if not exists:
                    session.add(
                        user_message(
                            conversation_id, pane, rows[panes.index(pane)]["messages"][-1]["content"], turn
                        )
                    )
            ids = self._placeholders(session, conversation, panes, turn, record, sampling)
        self._start(conversation_id, model, rows, panes, ids)
        return turn

    @staticmethod
    def _placeholders(
        session: Session,
        conversation: Conversation,
        panes: list[str],
        turn: int,
        record: dict[str, Any],
        sampling: dict[str, Any],
    ) -> list[int]:
        ids = []
        for pane in panes:
            steering = record if pane == "steered" else {"block": None, "terms": []}
            message = Message(
                conversation_id=conversation.id,
                pane=pane,
                role="assistant",
                content="",
                turn=turn,
                steering=steering,
                sampling=sampling,
                finish_reason="",
            )
            session.add(message)
            session.flush()
            ids.append(message.id)
        conversation.updated_at = now()
        return ids

    def _idle(self, conversation_id: int) -> None:
        with self.lock:
            if conversation_id in self.live:
                raise Conflict("a reply is still streaming; stop it or wait for it")

    def _start(
        self, conversation_id: int, model: str, rows: list[dict[str, Any]], panes: list[str], ids: list[int]
    ) -> None:
        rid = uuid.uuid4().hex
        with self.lock:
            self.live[conversation_id] = Live(conversation_id, rid, ids, panes, [""] * len(panes))
        self.service.executor.request({"type": "chat", "id": rid, "model": model, "rows": rows})

    def by_rid(self, rid: str) -> Live | None:
        with self.lock:
            return next((live for live in self.live.values() if live.rid == rid), None)

    def on_tokens(self, items: list[list[Any]]) -> None:
        """One decoding step of the chat batch: [request id, row, text] items, published as one
        `tokens` event per conversation ({pane: text})."""
        by_conversation: dict[int, tuple[Live, dict[str, str]]] = {}
        for rid, row, text in items:
            live = self.by_rid(str(rid))
            if live is None:
                continue
            with self.lock:
                live.texts[int(row)] += text
            pane = live.panes[int(row)]
            pieces = by_conversation.setdefault(live.conversation_id, (live, {}))[1]
            pieces[pane] = pieces.get(pane, "") + text
        for conversation_id, (_, pieces) in by_conversation.items():
            self.service.broker.publish(f"chat:{conversation_id}", {"type": "tokens", "panes": pieces})

    def on_event(self, event: dict[str, Any]) -> bool:
        """A worker event of a chat reply (runs on the executor's event thread); False if not ours."""
        if event["type"] == "chat_tokens":
            self.on_tokens(event["items"])
            return True
        live = self.by_rid(str(event.get("id")))
        if live is None or event["type"] != "reply":
            return False
        topic = f"chat:{live.conversation_id}"
        with self.service.db.session() as session:
            for i, message_id in enumerate(live.message_ids):
                message = session.get(Message, message_id)
                if message is None:
                    continue
                if event["ok"]:
                    row = event["value"]["rows"][i]
                    message.content, message.n_tokens = row["text"], row["n_tokens"]
                    message.finish_reason = row["finish_reason"]
                else:
                    message.content, message.finish_reason = live.texts[i], "error"
        with self.lock:
            self.live.pop(live.conversation_id, None)
        done = {"type": "done", "error": "" if event["ok"] else event["error"]}
        self.service.broker.publish(topic, done)
        return True

    def snapshot(self, conversation_id: int) -> dict[str, Any] | None:
        with self.lock:
            live = self.live.get(conversation_id)
            return None if live is None else {"panes": dict(zip(live.panes, live.texts, strict=True))}

    def stop(self, conversation_id: int) -> bool:
        with self.lock:
            live = self.live.get(conversation_id)
        if live is not None:
            self.service.executor.request({"type": "stop", "id": live.rid})
        return live is not None

    def watch(self, conversation_id: int, delta: int) -> None:
        """Count the streams watching a reply; once none is left, stop it after the grace period."""
        with self.lock:
            live = self.live.get(conversation_id)
            if live is None:
                return
            live.watchers += delta
            orphaned = live.watchers <= 0
        if orphaned:
            timer = threading.Timer(GRACE_S, self._stop_if_unwatched, args=(conversation_id, live.rid))
            timer.daemon = True
            timer.start()

    def _stop_if_unwatched(self, conversation_id: int, rid: str) -> None:
        with self.lock:
            live = self.live.get(conversation_id)
            stale = live is not None and live.rid == rid and live.watchers <= 0
        if stale:
            self.stop(conversation_id)


def messages_out(session: Session, conversation_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id)
    )
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
        | {"created_at": m.created_at.isoformat() + "Z"}
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
        lines += [
            f"### {m['pane']} ({terms or 'no steering'}{where}; seed {m['sampling'].get('seed')}, "
            f"temperature {m['sampling'].get('temperature')})",
            "",
            m["content"],
            "",
        ]
    return "\n".join(lines)
