"""Replies in progress: started for a conversation, fed by the worker's events, stored when done.

A reply lives on in the server while it streams, so a reloaded page picks up the text so far; a
reply nobody watches any more is stopped after a short grace period.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.broker import Subscription
from app.chat.conversations import (
    DEFAULT_SETTINGS,
    PANES,
    get,
    history,
    steering_record,
    user_message,
)
from app.errors import Conflict, Invalid
from app.executor.protocol import Chat, ChatTokens, CheckChat, Reply, Stop, Token
from app.models import Conversation, Message, now
from app.service import Service


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
        record, pairs, block, adapter = steering_record(session, conversation.steering)
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
            steered = pane == "steered"
            rows.append(
                {
                    "messages": messages,
                    "terms": pairs if steered else [],
                    "block": block if steered and pairs else None,
                    "adapter": adapter if steered else None,
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
        self.service.ask(CheckChat(model=model, rows=rows))
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
        self.service.ask(CheckChat(model=model, rows=rows))
        with self.service.db.session() as session:
            conversation = get(session, conversation_id)
            # The earlier replies stay (shown as earlier replies); the new ones answer the turn now.
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
        message = Chat(model=model, rows=rows)
        with self.lock:
            self.live[conversation_id] = Live(conversation_id, message.id, ids, panes, [""] * len(panes))
        self.service.executor.request(message)

    def by_rid(self, rid: str) -> Live | None:
        with self.lock:
            return next((live for live in self.live.values() if live.rid == rid), None)

    def on_tokens(self, items: list[tuple[str, int, str]]) -> None:
        """One decoding step of the chat batch: (request id, row, text) items, published as one
        `tokens` event per conversation ({pane: text}). Under the lock, as `follow` reads, so a
        stream that starts meanwhile gets each piece once: in its snapshot or as an event."""
        with self.lock:
            by_rid = {live.rid: live for live in self.live.values()}
            by_conversation: dict[int, dict[str, str]] = {}
            for rid, row, text in items:
                live = by_rid.get(str(rid))
                if live is None:
                    continue
                live.texts[int(row)] += text
                pane = live.panes[int(row)]
                pieces = by_conversation.setdefault(live.conversation_id, {})
                pieces[pane] = pieces.get(pane, "") + text
            for conversation_id, pieces in by_conversation.items():
                self.service.broker.publish(f"chat:{conversation_id}", {"type": "tokens", "panes": pieces})

    def on_event(self, event: Reply | Token | ChatTokens) -> bool:
        """A worker event of a chat reply (runs on the executor's event thread); False if not ours."""
        if isinstance(event, ChatTokens):
            self.on_tokens(event.items)
            return True
        live = self.by_rid(event.id)
        if live is None or not isinstance(event, Reply):
            return False
        # Stored by the recorder's writer, retried while the database is busy, then announced.
        stored = self.service.recorder.later(lambda: self._store_reply(live, event))
        stored.add_done_callback(lambda done: self._not_stored(live, done))
        return True

    def _not_stored(self, live: Live, done: Future[bool]) -> None:
        """The reply could not be stored (the database refused it for good, or the server stopped
        first): the page is told it was not kept, and the conversation takes messages again."""
        if done.exception() is None and done.result():
            return
        with self.lock:
            self.live.pop(live.conversation_id, None)
        error = "the reply could not be stored; it was not kept" + (
            " (the server is stopping)" if done.exception() is None else ""
        )
        self.service.broker.publish(f"chat:{live.conversation_id}", {"type": "done", "error": error})

    def _store_reply(self, live: Live, event: Reply) -> None:
        with self.service.db.session() as session:
            for i, message_id in enumerate(live.message_ids):
                message = session.get(Message, message_id)
                if message is None:
                    continue
                if event.ok:
                    row = event.value["rows"][i]
                    message.content, message.n_tokens = row["text"], row["n_tokens"]
                    message.finish_reason = row["finish_reason"]
                else:
                    message.content, message.finish_reason = live.texts[i], "error"
        with self.lock:
            self.live.pop(live.conversation_id, None)
        done = {"type": "done", "error": "" if event.ok else event.error}
        self.service.broker.publish(f"chat:{live.conversation_id}", done)

    def follow(self, conversation_id: int) -> tuple[Subscription, dict[str, Any] | None]:
        """Subscribe to a conversation's reply and read its text so far, at one instant (see
        `on_tokens`); the snapshot is None when no reply is in progress."""
        with self.lock:
            sub = self.service.broker.subscribe(f"chat:{conversation_id}")
            live = self.live.get(conversation_id)
            return sub, None if live is None else {"panes": dict(zip(live.panes, live.texts, strict=True))}

    def stop(self, conversation_id: int) -> bool:
        with self.lock:
            live = self.live.get(conversation_id)
        if live is not None:
            self.service.executor.request(Stop(live.rid))
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
            timer = threading.Timer(
                self.service.settings.chat_grace_s, self._stop_if_unwatched, args=(conversation_id, live.rid)
            )
            timer.daemon = True
            timer.start()

    def _stop_if_unwatched(self, conversation_id: int, rid: str) -> None:
        with self.lock:
            live = self.live.get(conversation_id)
            stale = live is not None and live.rid == rid and live.watchers <= 0
        if stale:
            self.stop(conversation_id)
