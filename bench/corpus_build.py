"""The corpus bench/dashboard.py reads, built where missing and timed: the embedded model's at block
7 for the dashboard's cost, the organism's search corpus for trigger hunting
(bench/trigger_hunting.py)."""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import log
from engine.discovery.corpus import Corpus, Part, corpus_steps
from engine.models import LoadedModel

BLOCK = 7  # the steered block of every vector the bench reads (the runs' default source)


def timed_build(
    lm: LoadedModel,
    root: Path,
    *,
    prompts: tuple[str, ...],
    bank: bool | int,
    extra: tuple[Part, ...] = (),
    tokens: int = 64,
) -> tuple[Corpus, dict[str, float]]:
    """The corpus, and seconds spent answering and storing residuals (0 for what was cached)."""
    marks: dict[str, float] = {}
    began = time.perf_counter()
    last = {"t": began}

    def unit(phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        marks[phase] = marks.get(phase, 0.0) + now - last["t"]
        last["t"] = now
        if done == total or (done and done % 256 == 0 and phase == "answering"):
            log(f"corpus: {phase} {done}/{total}")

    steps = corpus_steps(lm, root, BLOCK, prompts=prompts, bank=bank, extra=extra, max_new_tokens=tokens)
    corpus = None
    while corpus is None:
        try:
            unit(*next(steps))
        except StopIteration as end:
            corpus = end.value
    return corpus, {
        "answering_s": round(marks.get("answering", 0.0), 1),
        "residuals_s": round(marks.get("residuals", 0.0), 1),
    }
