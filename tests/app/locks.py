"""Another process holding SQLite's write lock on a database file until the test lets it go."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import TracebackType

HOLDER = textwrap.dedent(
    """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    for line in sys.stdin:
        if line.strip() == "release":
            break
        db.execute(line)
        print("done", flush=True)
    db.execute("COMMIT")
    print("released", flush=True)
    """
)
ANSWER_S = 60.0  # how long the holder may take to answer (a loaded machine)


class ExclusiveLock:
    """`BEGIN EXCLUSIVE` on the file, held by a subprocess: every other writer waits (or is told
    "database is locked"), readers in WAL mode go on. `run` executes SQL inside the held
    transaction; `release` commits; leaving the block kills the holder if it is still there."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> ExclusiveLock:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._answer() == "locked"
        return self

    def _answer(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def _say(self, line: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def run(self, sql: str) -> None:
        self._say(sql)
        assert self._answer() == "done"

    def release(self) -> None:
        self._say("release")
        assert self._answer() == "released"
        assert self.process is not None and self.process.wait(timeout=ANSWER_S) == 0

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=ANSWER_S)
