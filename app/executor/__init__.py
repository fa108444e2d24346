"""Executors run jobs and interactive requests on workers that own the model.

The web side only sees `Executor` (base.py). `LocalExecutor` starts one worker process on this
machine; a Ray executor (one actor per GPU) fits the same interface.
"""

from app.executor.base import Event, Executor, Order
from app.executor.local import LocalExecutor

__all__ = ["Event", "Executor", "LocalExecutor", "Order"]
