"""The worker's entry point, importable without torch: the engine loads only in the child process."""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Any


def run_worker(commands: Connection, events: Connection, config: dict[str, Any]) -> None:
    from app.executor import worker

    worker.main(commands, events, config)
