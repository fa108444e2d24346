"""The one interface between the web side and whatever runs the engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from app.executor.protocol import FromWorker, Order, Request, Stop


class Executor(Protocol):
    def start(self, on_event: Callable[[FromWorker], None]) -> None:
        """Start the workers; every message they send is handed to `on_event`, in order per worker.

        A worker that dies is reported as `WorkerDied` (with the job it ran, if any) after all of
        its earlier messages, and replaced.
        """

    def close(self) -> None: ...

    def free_slots(self) -> int:
        """How many more jobs the workers can take now."""

    def submit(self, order: Order) -> None: ...

    def cancel(self, job_id: int) -> None:
        """Ask the job to stop between steps; it reports what it finished, then `Finished`."""

    def request(self, message: Request | Stop) -> None:
        """An interactive request (validate, generate, …) served between training steps, or a stop."""
