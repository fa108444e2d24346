"""Interactive requests sent to workers and not answered yet. When a worker dies, each of its
requests gets a reply that says so, so a page or a chat never waits for an answer that cannot come.
"""

from __future__ import annotations

import threading

from app.executor.protocol import FromWorker, Reply

LOST = "the worker answering this stopped (it died or its machine was lost); try again"


class Inflight:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.worker: dict[str, str] = {}  # request id -> the worker it was sent to

    def sent(self, rid: str, worker: str) -> None:
        with self.lock:
            self.worker[rid] = worker

    def seen(self, message: FromWorker) -> None:
        """Forget a request once its reply comes back."""
        if isinstance(message, Reply):
            with self.lock:
                self.worker.pop(message.id, None)

    def where(self, rid: str) -> str | None:
        with self.lock:
            return self.worker.get(rid)

    def lost(self, worker: str) -> list[Reply]:
        """Replies for every request the dead `worker` held."""
        with self.lock:
            gone = [rid for rid, w in self.worker.items() if w == worker]
            for rid in gone:
                del self.worker[rid]
        return [Reply(id=rid, ok=False, error=LOST) for rid in gone]
