"""In-process publish/subscribe: worker events fan out to SSE streams and waiting requests.

Publishers run on any thread (the executor's event pump); a subscriber created inside the event
loop receives on an asyncio queue, one created elsewhere on a thread-safe queue. Closing the broker
(the server is shutting down) wakes every subscriber at once; `closed` then tells it to finish.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

# A stored job event or a chat's pieces (dicts, as the SSE streams send them), or a worker's
# reply or token to a request (app/executor/protocol.py), published as it came.
Message = Any


CLOSING: Message = {"type": "closing"}  # wakes a subscriber when the broker closes


class Subscription:
    def __init__(self, broker: Broker, topic: str) -> None:
        self.broker, self.topic = broker, topic
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self.aqueue: asyncio.Queue[Message] = asyncio.Queue()
        self.tqueue: queue.Queue[Message] = queue.Queue()

    def deliver(self, message: Message) -> None:
        if self.loop is None:
            self.tqueue.put(message)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.aqueue.put_nowait, message)

    @property
    def closed(self) -> bool:
        return self.broker.closed

    async def next(self, timeout: float) -> Message | None:
        """The next message, or None after `timeout` seconds without one or once the broker closed."""
        if self.closed:
            return None
        try:
            message = await asyncio.wait_for(self.aqueue.get(), timeout)
        except TimeoutError:
            return None
        return None if message is CLOSING else message

    def pending(self) -> list[Message]:
        """The messages already waiting, taken without waiting for more (an asyncio subscriber)."""
        taken = []
        while not self.aqueue.empty():
            message = self.aqueue.get_nowait()
            if message is not CLOSING:
                taken.append(message)
        return taken

    def next_sync(self, timeout: float) -> Message | None:
        if self.closed:
            return None
        try:
            message = self.tqueue.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if message is CLOSING else message

    def close(self) -> None:
        self.broker.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Broker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.topics: dict[str, list[Subscription]] = {}
        self.closed = False

    def subscribe(self, topic: str) -> Subscription:
        sub = Subscription(self, topic)
        with self.lock:
            self.topics.setdefault(topic, []).append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self.lock:
            subs = self.topics.get(sub.topic, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self.topics.pop(sub.topic, None)

    def close(self) -> None:
        """Wake every subscriber for good: the server is shutting down."""
        with self.lock:
            self.closed = True
            subs = [sub for topic in self.topics.values() for sub in topic]
        for sub in subs:
            sub.deliver(CLOSING)

    def publish(self, topic: str, message: Message) -> None:
        with self.lock:
            subs = list(self.topics.get(topic, ()))
        for sub in subs:
            sub.deliver(message)
