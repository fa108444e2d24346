"""The one interface between the web side and whatever runs the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# Everything a worker reports is a JSON-able dict with a "type"; vectors travel as float32 bytes.
# Job events carry "job" and "attempt"; replies and tokens of interactive requests carry "id".
Event = dict[str, Any]


@dataclass(frozen=True)
class Order:
    """A job for a worker: what to run, and what an earlier attempt already stored."""

    job_id: int
    attempt: int
    kind: str  # the run's kind (app/kinds.py), for the worker's messages
    task: str  # the module of app/executor/tasks that carries it out
    spec: dict[str, Any]  # the engine spec, validated
    done: list[bytes] = field(default_factory=list)  # stored vectors of this run, in index order
    theta0: bytes | None = None  # a chain's starting vector
    # (id, block, values): a generate job's vectors; those a refinement stays orthogonal to
    vectors: list[tuple[int, int, bytes]] = field(default_factory=list)
    gallery: dict[str, Any] = field(default_factory=dict)  # prompts, max_new_tokens, batch, done pairs
    # The steering adapters among `done` and `vectors` (app/executor/codec.py's payload, with the
    # vector's "id" and "index"): they steer with their factors, not their values.
    adapters: list[dict[str, Any]] = field(default_factory=list)


class Executor(Protocol):
    def start(self, on_event: Callable[[Event], None]) -> None:
        """Start the workers; every event they send is handed to `on_event`, in order per worker.

        A worker that dies is reported as {"type": "worker_died", "job": id or None} after all of
        its earlier events, and replaced.
        """

    def close(self) -> None: ...

    def free_slots(self) -> int:
        """How many more jobs the workers can take now."""

    def submit(self, order: Order) -> None: ...

    def cancel(self, job_id: int) -> None:
        """Ask the job to stop between steps; it reports what it finished, then "finished"."""

    def request(self, message: dict[str, Any]) -> None:
        """An interactive request (validate, generate, stop) served between training steps."""
