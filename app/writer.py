"""The server's one writer of results: a thread that applies writes one at a time, in the order they
were handed over, each in its own transaction, retried while the database is busy.

What the worker reports (job events, chat replies) and what a request has shown its user (a streamed
generation) is written here, so a busy database delays it but loses none of it. The retry policy:

- SQLite's BUSY and LOCKED ("database is locked"): another connection holds the lock (a backup, a
  long write of another process). Tried again, with a back-off, until the write lands.
- IOERR and FULL (a disk I/O error, a full disk): tried again for up to `HICCUP_S`, as a hiccup of
  the disk may pass and space may be freed; past that the error is treated as permanent.
- Anything else (no such table or column, a constraint, a corrupt file): permanent at once. It is
  not retried: it would wedge the only writer while writes pile up behind it. It is logged with its
  traceback and handed to whoever waits on the write; the recorder fails the job whose event it
  was, and a write nobody answers for is kept in `faults`, which the health check reports.

The queue holds at most `MAX_PENDING` writes. When it is full, `later` blocks its caller until there
is room: the executor's event thread waits, and with it the worker's pipe, so the worker itself
slows down. Nothing is dropped. The writer's own follow-up writes never wait (they skip the queue's
limit), so it cannot block on itself.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)
FIRST_RETRY_S, LAST_RETRY_S = 0.05, 2.0  # back-off between tries of a write the database refused
HICCUP_S = 60.0  # how long a disk I/O error or a full disk is tried again before it counts as permanent
MAX_PENDING = 1000  # writes waiting; past this, whoever hands over one more waits for room
FAULTS_KEPT = 20  # the newest permanent failures the health check shows
# SQLite's primary result codes (the low byte of an extended code).
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL = 5, 6, 10, 13
Write = Callable[[], None]


def refusal(exc: OperationalError) -> str:
    """'busy' (tried until it lands), 'hiccup' (tried for a while) or 'permanent'."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(exc.orig, sqlite3.Error) and code is not None:
        primary = code & 0xFF
        if primary in (SQLITE_BUSY, SQLITE_LOCKED):
            return "busy"
        return "hiccup" if primary in (SQLITE_IOERR, SQLITE_FULL) else "permanent"
    text = str(exc.orig).lower()
    if "locked" in text or "busy" in text:
        return "busy"
    return "hiccup" if "disk i/o error" in text or "database or disk is full" in text else "permanent"


@dataclass
class Fault:
    at: float  # time.time()
    error: str


@dataclass
class _Item:
    write: Write
    done: Future[bool] = field(default_factory=Future)


class Writer:
    def __init__(self, *, limit: int = MAX_PENDING) -> None:
        self.pending: queue.Queue[_Item | None] = queue.Queue(maxsize=limit)
        self.followups: deque[_Item] = deque()  # queued by a write, on the writer thread
        self.thread: threading.Thread | None = None
        self.give_up_at: float | None = None  # set when stopping: retries end then
        self.closed = False  # stopped: a write handed over now is not written
        self.retries = 0  # writes the database refused for a while (each was tried again)
        self.refused_since: float | None = None  # a write is waiting on a busy database since then
        self.faults: deque[Fault] = deque(maxlen=FAULTS_KEPT)

    def start(self) -> None:
        self.give_up_at = None
        self.thread = threading.Thread(target=self._loop, name="steerscope-writer", daemon=True)
        self.thread.start()

    def stop(self, timeout: float) -> None:
        """Write what is queued; a write the database still refuses after `timeout` s is left (its
        waiter is told False: a job's is redone at the next start)."""
        self.give_up_at = time.monotonic() + timeout
        self.closed = True
        if self.thread is not None:
            self.pending.put(None)
            self.thread.join(timeout + 1)
        self._drop_rest()

    def later(self, write: Write) -> Future[bool]:
        """Queue `write` (one transaction) after everything queued before it; it is retried while the
        database is busy. The future says True once it landed, False if the writer stopped first, or
        holds the error that made it fail for good. Blocks while the queue is full."""
        item = _Item(write)
        if threading.current_thread() is self.thread:
            self.followups.append(item)
            return item.done
        while not self.closed:
            try:
                self.pending.put(item, timeout=1.0)
                return item.done
            except queue.Full:
                continue
        item.done.set_result(False)
        return item.done

    def _next(self) -> _Item | None:
        return self.followups.popleft() if self.followups else self.pending.get()

    def _loop(self) -> None:
        while (item := self._next()) is not None:
            try:
                item.done.set_result(self.durably(item.write))
            except Exception as exc:  # one failed write must not stop the ones after it
                log.exception("a write failed for good and was not retried")
                self.faults.append(Fault(time.time(), f"{type(exc).__name__}: {exc}"[:500]))
                item.done.set_exception(exc)
        self._drop_rest()

    def _drop_rest(self) -> None:
        """Stopped: whoever waits on a write still queued is told it was not written."""
        while True:
            try:
                item = self.followups.popleft() if self.followups else self.pending.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                with contextlib.suppress(InvalidStateError):  # the writer answered it meanwhile
                    item.done.set_result(False)

    def durably(self, write: Write) -> bool:
        """Run `write` until the database takes it; False if the writer stopped first. A permanent
        error (or a disk error that outlasts `HICCUP_S`) is raised."""
        wait, first = FIRST_RETRY_S, time.monotonic()
        while True:
            try:
                write()
                self.refused_since = None
                return True
            except OperationalError as exc:
                kind = refusal(exc)
                if kind == "permanent" or (kind == "hiccup" and time.monotonic() - first > HICCUP_S):
                    self.refused_since = None
                    raise
                if self.give_up_at is not None and time.monotonic() > self.give_up_at:
                    log.warning(
                        "stopping with a write the database refused (%s); the next start redoes it", exc.orig
                    )
                    self.refused_since = None
                    return False
                self.retries += 1
                if self.refused_since is None:
                    self.refused_since = time.monotonic()
                    log.warning("the database refused a write (%s); trying again until it takes it", exc.orig)
                time.sleep(wait)
                wait = min(2 * wait, LAST_RETRY_S)

    def health(self) -> dict[str, Any]:
        """What the health check reports: writes waiting, a busy database, failures for good."""
        since = self.refused_since
        return {
            "pending": self.pending.qsize() + len(self.followups),
            "limit": self.pending.maxsize,
            "waiting_on_database_s": None if since is None else round(time.monotonic() - since, 1),
            "retries": self.retries,
            "faults": [{"at": f.at, "error": f.error} for f in self.faults],
        }
