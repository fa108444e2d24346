"""The scale-out worker: a Ray actor that owns one device and runs the compute loop on it.

Commands arrive in order on one thread ("commands" group); events leave in order, in batches,
through a streaming generator ("events" group). The server is the Ray driver and the only writer
of the database. This module is imported only where Ray is used: on the server and on every node.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import ray

from app.executor.protocol import FromWorker, Ready, ToWorker

BATCH = 256  # events per streamed item at most


@ray.remote(concurrency_groups={"commands": 1, "events": 1})  # type: ignore[call-overload]
class WorkerActor:
    def __init__(self, config: dict[str, Any]) -> None:
        import torch  # the engine loads here, in the actor's process, never in the server's

        from app.executor.loop import ComputeLoop

        if config.get("threads"):
            torch.set_num_threads(int(config["threads"]))
        self.outbox: queue.SimpleQueue[FromWorker] = queue.SimpleQueue()
        self.outbox.put(Ready(pid=os.getpid(), node=ray.util.get_node_ip_address()))
        self.loop = ComputeLoop(self.outbox.put, config)
        threading.Thread(target=self.loop.run, name="compute", daemon=True).start()

    @ray.method(concurrency_group="commands")
    def put(self, message: ToWorker) -> None:
        self.loop.put(message)

    @ray.method(concurrency_group="events", num_returns="streaming")
    def events(self) -> Iterator[list[FromWorker]]:
        while True:
            batch = [self.outbox.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self.outbox.get_nowait())
                except queue.Empty:
                    break
            yield batch
