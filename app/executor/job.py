"""A job as the worker carries it out: its order, its reporting (events tagged with job and
attempt, throttled progress), its cancel flag and its clock. Every task reports through one."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from app.executor.protocol import FromWorker, JobEvent, Order, Progress

if TYPE_CHECKING:
    from engine.methods.adapters import Adapter

Units = Generator[None, None, bool]  # yields between units; returns True if the job was cancelled
PROGRESS_EVERY_S = 0.25  # progress events per job at most this often


class Clock:
    """Wall time between a job's units (other work interleaved included): what an ETA needs."""

    def __init__(self) -> None:
        self.mark: float | None = None
        self.unit_s = 0.0

    def tick(self) -> None:
        now = time.perf_counter()
        if self.mark is not None:
            took = now - self.mark
            self.unit_s = took if self.unit_s == 0 else 0.8 * self.unit_s + 0.2 * took
        self.mark = now

    def eta(self, units: float) -> float | None:
        return round(units * self.unit_s, 1) if self.unit_s > 0 else None

    @staticmethod
    def left(seconds: float | None) -> str:
        """An ETA as a progress message says it ("" while it is not known)."""
        if seconds is None:
            return ""
        return f" · about {seconds:.0f} s left" if seconds < 120 else f" · about {seconds / 60:.0f} min left"


class Job:
    """One order's reporting: events tagged with job and attempt, throttled progress, cancel flag."""

    def __init__(self, order: Order, send: Callable[[FromWorker], None], data: str = "data") -> None:
        self.order, self.send = order, send
        self.data = data  # the worker's data dir (a model's corpus is cached under it)
        self.cancelled = False  # set by the compute loop when a cancel arrives
        self.points: list[tuple[int, int, float]] = []  # objective curve points since the last event
        self.last = 0.0
        self.vectors: list[tuple[int, int, bytes]] = []  # (index, block, values): the gallery's vectors
        self.adapters: dict[int, Adapter] = {}  # index -> adapter, for the gallery's vectors that are one
        self.clock = Clock()

    @property
    def ids(self) -> tuple[int, int]:
        """(job, attempt): what every event of this job starts with."""
        return self.order.job_id, self.order.attempt

    def emit(self, event: JobEvent) -> None:
        self.send(event)

    def point(self, vector: int, step: int, value: float) -> None:
        self.points.append((vector, step, value))

    def progress(self, fraction: float, message: str, *, force: bool = False, **figures: Any) -> None:
        if force or time.monotonic() - self.last >= PROGRESS_EVERY_S:
            self.emit(
                Progress(
                    *self.ids,
                    progress=min(fraction, 1.0),
                    message=message,
                    points=self.points,
                    figures=figures,
                )
            )
            self.points, self.last = [], time.monotonic()
