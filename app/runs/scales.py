"""Where the gallery shows a vector and where scoring reads it, in the app's words: the worker's
probe ladder and scoring's ceiling as engine/refine/working_scale.py states them (the web process
does not import the engine; tests/app/test_specs_in_step.py keeps the two in step)."""

from __future__ import annotations

LADDER = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # the probe's rungs, multiples of the vector as stored
SCORED_UP_TO = 1.0  # scoring reads a vector at its working scale, but never above this
LADDER_TEXT = ", ".join(f"{s:g}" for s in LADDER)  # "0.5, 0.75, 1, 1.5, 2, 3", as pages say it


def scored_scale(working: float | None) -> float:
    """The scale at which scoring reads a vector: its working scale up to x1 (x1 when not probed)."""
    return min(SCORED_UP_TO, 1.0 if working is None else working)
