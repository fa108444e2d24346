"""The worker's entry point, importable without torch: the engine loads only in the child process."""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection
from typing import Any


def run_worker(commands: Connection, events: Connection, config: dict[str, Any]) -> None:
    # The server owns its worker's life. A Ctrl-C in a terminal, or a service manager's SIGTERM,
    # goes to the whole process group: were the worker to die of it first, the server would take
    # that for a crash and start another while it shuts down. The server stops the worker itself
    # (Shutdown, or the pipe's end when the server is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from app.executor import worker

    worker.main(commands, events, config)
