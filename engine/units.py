"""Work done as units: the engine's long jobs are generators that yield after each unit (so a
worker's compute loop can run other work between two) and return their result at the end."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def run_steps(steps: Generator[tuple[Any, ...], None, T], on_unit: Callable[..., None] | None = None) -> T:
    """Drive a generator of units to its end, calling `on_unit(*unit)` after each; its return value."""
    while True:
        try:
            unit = next(steps)
        except StopIteration as end:
            return end.value
        if on_unit is not None:
            on_unit(*unit)
