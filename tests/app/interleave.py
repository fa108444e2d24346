"""Run a few actions in real threads against a real SQLite file, in an interleaving chosen by the test.

The threads take turns: one runs while the others wait at a switch point, and a switch point is
wherever another thread's write could slip in, i.e. before every statement a thread runs outside a
transaction (a read, or the write that opens its transaction). Inside a write transaction a
thread runs on to its commit, as SQLite makes every other writer wait for it anyway; so a waiting
thread never holds a lock and the turns cannot deadlock. Which thread goes on at each switch point
comes from `choices` (drawn by Hypothesis), then, once they run out, the lowest-numbered one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine, event

STUCK_S = 60.0  # a turn that never comes is a bug of the test (or a deadlock of the code): fail


class Interleaver:
    def __init__(self, engine: Engine, choices: list[int]) -> None:
        self.engine = engine
        self.choices: Iterator[int] = iter(choices)
        self.cond = threading.Condition()
        self.live: set[int] = set()
        self.arrived: set[int] = set()
        self.turn: int | None = None
        self.index: dict[int, int] = {}  # thread ident -> action number
        self.trace: list[int] = []  # who went on at each switch point

    def run(self, actions: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        """Each action's (True, result) or (False, exception), once all have ended."""
        outcomes: list[tuple[bool, Any]] = [(False, None)] * len(actions)
        self.live = set(range(len(actions)))

        def body(i: int, action: Callable[[], Any]) -> None:
            self.index[threading.get_ident()] = i
            try:
                self._switch(i)
                outcomes[i] = (True, action())
            except Exception as exc:
                outcomes[i] = (False, exc)
            finally:
                with self.cond:
                    self.live.discard(i)
                    self._choose()

        event.listen(self.engine, "before_cursor_execute", self._statement)
        try:
            threads = [threading.Thread(target=body, args=(i, a), daemon=True) for i, a in enumerate(actions)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(STUCK_S)
                assert not thread.is_alive(), f"an interleaving got stuck: {self.trace}"
        finally:
            event.remove(self.engine, "before_cursor_execute", self._statement)
        return outcomes

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        i = self.index.get(threading.get_ident())
        if i is not None and not conn.connection.dbapi_connection.in_transaction:
            self._switch(i)

    def _switch(self, i: int) -> None:
        """Wait here until it is `i`'s turn (the first arrival waits for all the others)."""
        deadline = time.monotonic() + STUCK_S
        with self.cond:
            self.arrived.add(i)
            if self.turn == i or (self.turn is None and self.arrived >= self.live):
                self._choose()
            while self.turn != i:
                assert time.monotonic() < deadline, f"an interleaving got stuck: {self.trace}"
                self.cond.wait(1.0)

    def _choose(self) -> None:
        """Pick who goes on, among the live actions (all of them are waiting at a switch point)."""
        ready = sorted(self.live & self.arrived)
        if not ready:
            self.turn = None
            return
        choice = next(self.choices, None)
        self.turn = ready[choice % len(ready)] if choice is not None else ready[0]
        self.trace.append(self.turn)
        self.cond.notify_all()
