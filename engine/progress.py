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
