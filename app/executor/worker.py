"""The worker process: its compute loop owns the model; one thread only moves commands from the
pipe into the loop's inbox (so the server never waits on a busy worker), and never computes.

Everything goes back to the server as events; the worker never touches the database.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

import torch
from tqdm import tqdm

from app.executor.loop import ComputeLoop
from app.executor.protocol import Ready, Shutdown, ToWorker


def main(commands: Connection, events: Connection, config: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    # Progress bars (loading weights) would otherwise make a process-shared lock, a named semaphore
    # that os._exit below never unlinks: the parent's resource tracker then warns of a leak at exit.
    tqdm.set_lock(threading.RLock())
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    if config.get("nice"):
        os.nice(int(config["nice"]))  # the web process stays responsive while the worker computes
    loop = ComputeLoop(events.send, config)  # the loop alone sends events (after `ready`)

    def pump() -> None:
        while True:
            try:
                message: ToWorker = commands.recv()
            except (EOFError, OSError):
                message = Shutdown()  # the server is gone: so is the reason to compute
            loop.put(message)
            if isinstance(message, Shutdown):
                return

    threading.Thread(target=pump, name="commands", daemon=True).start()
    events.send(Ready(pid=os.getpid()))
    try:
        loop.run()
    finally:
        # Leave at once: the interpreter's teardown of torch state would only slow the exit.
        sys.stderr.flush()
        os._exit(0)
