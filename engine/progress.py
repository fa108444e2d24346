"""Where a trainer stands, in its own step budget: what progress bars and ETAs are made from."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    total: int  # vectors this call trains
    done: int  # finished
    training: int  # in the batch being trained now
    step: int  # steps (or loss evaluations) the batch has taken
    budget: int  # the most a batch may take (fast modes may stop sooner)
    per_batch: int  # vectors trained together
    early_stops: int = 0  # batches that converged before their budget
    finished_steps: int = 0  # steps the finished batches took, all together

    @property
    def fraction(self) -> float:
        """Share of the work done, a finished batch counting its whole budget."""
        if self.budget == 0:
            return self.done / max(self.total, 1)
        return (self.done * self.budget + self.training * self.step) / max(self.total * self.budget, 1)

    @property
    def steps_left(self) -> int:
        """Steps still to take at most: the batch in training's, then every batch not started."""
        waiting = self.total - self.done - self.training
        current = self.budget - self.step if self.training else 0
        return current + math.ceil(waiting / max(self.per_batch, 1)) * self.budget

    @property
    def expected_steps_left(self) -> float:
        """Steps still to take if every batch takes as many as the finished ones did on average
        (their budget until one has finished): what a steady ETA is made from."""
        batches = math.ceil(self.done / max(self.per_batch, 1))
        mean = self.finished_steps / batches if batches and self.finished_steps else self.budget
        waiting = self.total - self.done - self.training
        current = max(mean - self.step, 1.0) if self.training else 0.0
        return current + math.ceil(waiting / max(self.per_batch, 1)) * mean
