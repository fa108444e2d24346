"""A job as the worker carries it out: its order, its reporting (events tagged with job and
attempt, throttled progress), its cancel flag and its clock. Every task reports through one."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from app.executor.protocol import FromWorker, JobEvent, Order, Progress

if TYPE_CHECKING:
    from engine.methods.adapters import Adapter

Units = Generator[None, None, bool]  # yields between units; returns True if the job was cancelled
PROGRESS_EVERY_S = 0.25  # progress events per job at most this often
TAU_S = 30.0  # an ETA's memory: how fast the weight of a unit's pace fades


class Clock:
    """A phase's pace: units done per second of wall time (other work interleaved included),
    averaged with weights that fade over TAU_S, so one slow unit or a burst of chat does not swing
    the ETA. A new phase (training, samples, scoring) starts afresh."""

    def __init__(self) -> None:
        self.phase = ""
        self.mark: float | None = None
        self.units = 0.0  # units done, faded
        self.seconds = 0.0  # wall time they took, faded the same way

    def tick(self, units: float = 1.0, *, phase: str = "") -> None:
        """`units` more are done (a step, a decode step, a scoring chunk)."""
        now = time.perf_counter()
        if phase != self.phase or self.mark is None:
            self.phase, self.mark, self.units, self.seconds = phase, now, 0.0, 0.0
            return
        took, self.mark = now - self.mark, now
        fade = math.exp(-took / TAU_S)
        self.units = self.units * fade + units
        self.seconds = self.seconds * fade + took

    def eta(self, units: float) -> float | None:
        """Seconds for `units` more at the recent pace (None until a unit was timed)."""
        if self.units <= 0 or self.seconds <= 0:
            return None
        return round(max(units, 0.0) * self.seconds / self.units, 1)

    @staticmethod
    def left(seconds: float | None) -> str:
        """An ETA as a progress message says it ("" while it is not known); never "0 s" while work
        remains, and rounded so that it reads steadily."""
        if seconds is None:
            return ""
        if seconds < 10:
            return " · a few seconds left"
        if seconds < 90:
            return f" · about {5 * round(seconds / 5):.0f} s left"
        if seconds < 5400:
            return f" · about {max(2, round(seconds / 60)):.0f} min left"
        return f" · about {seconds / 3600:.1f} h left"


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
        self.resolved: tuple[Any, ...] = ()  # blocks and R as last sent (training.resolve)

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
