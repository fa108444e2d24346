"""The worker process: owns the model, trains on one thread, serves interactive requests on another.

Training pauses at its next step whenever an interactive request is waiting (the Gate), so a chat
reply or a single sample never waits behind a long run. Everything goes back to the server as
events; the worker never touches the database.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import torch

from app.executor import chat, tasks
from app.executor.base import Event, Order
from engine import EngineError, LoadedModel, load_model

log = logging.getLogger("steerscope.worker")
CHAT_WINDOW_S = 0.05  # a chat waits this long for others to share its batch
MAX_CHATS = 16  # chat requests decoded together (two rows each: steered and unsteered)
MAX_CHAT_WAIT_S = 0.5  # ... but a batch never waits longer than this for company
QUICK = ("check_chat", "validate", "render")  # answered at once, even while chats gather
Send = Callable[[Event], None]


class Gate:
    """Training waits here between steps while interactive requests are pending."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending = 0

    def add(self) -> None:
        with self.cond:
            self.pending += 1

    def done(self) -> None:
        with self.cond:
            self.pending -= 1
            self.cond.notify_all()

    def wait(self) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.pending == 0)


class Models:
    """Loaded models by name. Loading one evicts those nobody is using, so one stays resident on CPU."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.loaded: dict[str, LoadedModel] = {}
        self.users: dict[str, int] = {}

    @contextmanager
    def use(self, name: str) -> Iterator[LoadedModel]:
        with self.lock:
            if name not in self.loaded:
                lm = load_model(
                    name,
                    device=self.config["device"],
                    dtype=self.config["dtype"],
                    data=self.config["data_dir"],
                )  # before evicting: a name that fails to load costs the resident model nothing
                for other in [n for n in self.loaded if not self.users.get(n)]:
                    del self.loaded[other]
                self.loaded[name] = lm
            self.users[name] = self.users.get(name, 0) + 1
            lm = self.loaded[name]
        try:
            yield lm
        finally:
            with self.lock:
                self.users[name] -= 1


class Worker:
    def __init__(self, send: Send, config: dict[str, Any]) -> None:
        self.send = send
        self.config = config
        self.models = Models(config)
        self.gate = Gate()
        self.jobs: queue.Queue[Order | None] = queue.Queue()
        self.requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.cancelled: set[int] = set()
        self.stops: dict[str, threading.Event] = {}

    def handle(self, message: dict[str, Any]) -> bool:
        """One command from the server; False means shut down."""
        kind = message.get("type")
        if kind == "job":
            self.jobs.put(Order(**message["order"]))
        elif kind == "cancel":
            self.cancelled.add(int(message["job"]))
        elif kind == "stop":
            stop = self.stops.get(str(message["id"]))
            if stop is not None:  # a request still waiting or decoding
                stop.set()
        elif kind in (
            "validate",
            "generate",
            "render",
            "downstream",
            "chat",
            "check_chat",
            "export_vectors",
            "parse_vectors",
        ):
            self.stops.setdefault(str(message["id"]), threading.Event())
            self.gate.add()
            self.requests.put(message)
        elif kind == "shutdown":
            return False
        return True

    def _cancel_check(self, job_id: int) -> Callable[[], bool]:
        return lambda: job_id in self.cancelled

    def training_loop(self) -> None:
        while (order := self.jobs.get()) is not None:
            job = tasks.Job(order, self.send, self.gate, self._cancel_check(order.job_id))
            status, error = "succeeded", ""
            try:
                with self.models.use(order.spec.get("model", "default")) as lm:
                    cancelled = tasks.run(lm, job, self.config)
                status = "cancelled" if cancelled else "succeeded"
            except EngineError as exc:
                status, error = "failed", str(exc)
            except Exception:
                traceback.print_exc()
                status, error = "failed", "internal error (the worker's log has the traceback)"
            self.cancelled.discard(order.job_id)
            self.send(
                {
                    "type": "finished",
                    "job": order.job_id,
                    "attempt": order.attempt,
                    "status": status,
                    "error": error,
                }
            )

    def request_loop(self) -> None:
        waiting: deque[dict[str, Any] | None] = deque()
        while True:
            message = waiting.popleft() if waiting else self.requests.get()
            if message is None:
                return
            if message["type"] != "chat":
                self._serve(message)
                continue
            self._serve_chats(self._gather(message, waiting))

    def _gather(self, first: dict[str, Any], waiting: deque[dict[str, Any] | None]) -> list[dict[str, Any]]:
        """The chats to decode with `first`: those that arrive while we wait a moment.

        A chat is preceded by its check; checks are answered here at once, and each one that passes
        means its chat is on the way, so the batch waits for it (up to MAX_CHAT_WAIT_S in all).
        """
        began = time.monotonic()
        batch, deadline, expected = [first], began + CHAT_WINDOW_S, 0
        while len(batch) < MAX_CHATS:
            limit = began + MAX_CHAT_WAIT_S if expected > 0 else deadline
            try:
                other = self.requests.get(timeout=max(0.0, limit - time.monotonic()))
            except queue.Empty:
                break
            if other is None or other["type"] not in ("chat", *QUICK):
                waiting.append(other)
                continue
            if other["type"] == "chat" and other.get("model") == first.get("model"):
                batch.append(other)
                expected = max(0, expected - 1)
            elif other["type"] == "chat":
                waiting.append(other)
            elif self._serve(other) and other["type"] == "check_chat":
                expected += 1
            deadline = min(time.monotonic() + CHAT_WINDOW_S, began + MAX_CHAT_WAIT_S)
        return batch

    def _finish(self, rid: str) -> None:
        self.stops.pop(rid, None)
        self.gate.done()

    def _fail(self, rid: str, exc: Exception) -> None:
        if isinstance(exc, EngineError):
            self.send({"type": "reply", "id": rid, "ok": False, "error": str(exc)})
        else:
            traceback.print_exception(exc)
            self.send({"type": "reply", "id": rid, "ok": False, "error": "internal error in the worker"})

    def _serve(self, message: dict[str, Any]) -> bool:
        """Answer one request; True if it succeeded."""
        rid = str(message["id"])
        try:
            with self.models.use(message.get("model", "default")) as lm:
                value = (
                    chat.check(lm, message)
                    if message["type"] == "check_chat"
                    else tasks.interactive(lm, message, self.send, self.stops[rid], self.config)
                )
            self.send({"type": "reply", "id": rid, "ok": True, "value": value})
            return True
        except Exception as exc:
            self._fail(rid, exc)
            return False
        finally:
            self._finish(rid)

    def _serve_chats(self, batch: list[dict[str, Any]]) -> None:
        log.info("decoding %d chat replies together", len(batch))
        try:
            with self.models.use(batch[0].get("model", "default")) as lm:
                good = []
                for message in batch:  # one bad request must not sink the others
                    try:
                        chat.check(lm, message)
                        good.append(message)
                    except Exception as exc:
                        self._fail(str(message["id"]), exc)
                if good:
                    chat.reply(lm, good, self.send, self.stops)
        except Exception as exc:
            for message in batch:
                self._fail(str(message["id"]), exc)
        finally:
            for message in batch:
                self._finish(str(message["id"]))


def main(commands: Connection, events: Connection, config: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    if config.get("nice"):
        os.nice(int(config["nice"]))  # the web process stays responsive while the worker computes
    lock = threading.Lock()

    def send(event: Event) -> None:
        with lock:
            events.send(event)

    worker = Worker(send, config)
    threads = [
        threading.Thread(target=worker.training_loop, name="training", daemon=True),
        threading.Thread(target=worker.request_loop, name="interactive", daemon=True),
    ]
    for thread in threads:
        thread.start()
    send({"type": "ready", "pid": os.getpid()})
    try:
        while True:
            try:
                message = commands.recv()
            except (EOFError, OSError):
                break  # the server is gone: so is the reason to compute
            if not worker.handle(message):
                break
    finally:
        worker.jobs.put(None)
        worker.requests.put(None)
        # Leave at once: the threads may be inside torch, whose teardown would then abort noisily.
        sys.stderr.flush()
        os._exit(0)
