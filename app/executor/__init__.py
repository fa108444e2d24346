"""Executors run jobs and interactive requests on workers that own the model.

The web side only sees `Executor` (base.py) and the typed messages (protocol.py). `LocalExecutor`
starts one worker process on this machine; a Ray executor (one actor per GPU) fits the same
interface.
"""

from app.executor.base import Executor
from app.executor.local import LocalExecutor
from app.executor.protocol import FromWorker, Order

__all__ = ["Executor", "FromWorker", "LocalExecutor", "Order"]
