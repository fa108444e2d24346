"""What the worker does for each kind of job: one module per task (the kinds table, app/kinds.py,
names each kind's task), each a generator of units that yields after every training step or
decode step, so the compute loop can run other work between two of them.

Each finished chunk (a fast-mode batch, one vector in reference mode, a chain batch) is sent, and
stored, before the next starts; a resumed job hands the stored vectors back in and the engine
carries on at the next index with the starts an uninterrupted run would have used. A run with a
gallery has its vectors sampled on its prompts once its task is done.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol

from app.executor.gallery import gallery
from app.executor.job import Job, Units
from app.executor.protocol import Started
from app.executor.training import TRAIN_SHARE
from engine import LoadedModel
from engine.discovery.embedder import Embedder


class Task(Protocol):
    """A task module's one entry point."""

    def __call__(self, lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units: ...


def task(name: str) -> Task:
    """The task of that name (a module of this package); ModuleNotFoundError if there is none."""
    run: Task = importlib.import_module(f"{__name__}.{name}").run
    return run


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    """Carry out the order, one unit per `next()`; returns True if it was cancelled. `embedder`
    gives the worker's sentence-embedding model (loaded when scoring first needs it)."""
    job.emit(Started(*job.ids, model=lm.info.to_dict()))
    if (yield from task(job.order.task)(lm, job, embedder)):
        return True
    if job.order.gallery.get("prompts"):
        return (yield from gallery(lm, job, start=TRAIN_SHARE))
    return False
