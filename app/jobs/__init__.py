"""The job queue: its state machine (machine.py), and the jobs API and pages.

`from app import jobs` gives the state machine's functions, as every caller uses them.
"""

from app.jobs.machine import (
    EPOCH,
    FINISHED,
    STATUSES,
    TRANSITIONS,
    Lost,
    Status,
    beat,
    claim_next,
    enqueue,
    get,
    hold,
    interrupt,
    request_cancel,
    requeue_interrupted,
    retry,
    stale_cutoff,
    transition,
)

__all__ = [
    "EPOCH",
    "FINISHED",
    "STATUSES",
    "TRANSITIONS",
    "Lost",
    "Status",
    "beat",
    "claim_next",
    "enqueue",
    "get",
    "hold",
    "interrupt",
    "request_cancel",
    "requeue_interrupted",
    "retry",
    "stale_cutoff",
    "transition",
]
