"""One worker process on this machine, started with spawn (forking a process that holds torch
state is unsafe), talking over two one-way pipes."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import threading
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from app.executor.entry import run_worker
from app.executor.inflight import Inflight
from app.executor.protocol import (
    Cancel,
    Finished,
    FromWorker,
    Order,
    Request,
    Resident,
    RunJob,
    Shutdown,
    Started,
    Stop,
    ToWorker,
    WorkerDied,
)

log = logging.getLogger(__name__)


class LocalExecutor:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config  # handed to the worker: device, dtype, data_dir, threads
        self.context = mp.get_context("spawn")
        self.lock = threading.Lock()
        self.process: BaseProcess | None = None
        self.commands: Connection | None = None
        self.job: int | None = None  # the job the worker is running
        self.on_event: Callable[[FromWorker], None] = lambda event: None
        self.closing = False
        self.pump: threading.Thread | None = None
        self.inflight = Inflight()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, on_event: Callable[[FromWorker], None]) -> None:
        self.on_event = on_event
        self._spawn()

    def _spawn(self) -> None:
        commands_out, commands_in = self.context.Pipe(duplex=False)
        events_out, events_in = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=run_worker,
            args=(commands_out, events_in, self.config),
            name="steerscope-worker",
            daemon=True,
        )
        process.start()
        # Close our copies of the child's ends: a dead child then shows up as EOF, not as silence.
        commands_out.close()
        events_in.close()
        with self.lock:
            self.process, self.commands, self.job = process, commands_in, None
        self.pump = threading.Thread(
            target=self._pump, args=(process, events_out), name="steerscope-events", daemon=True
        )
        self.pump.start()

    def _pump(self, process: BaseProcess, events: Connection) -> None:
        """Hand on every event; when the worker dies, report it (after its last events) and replace it."""
        while True:
            try:
                event: FromWorker = events.recv()
            except (EOFError, OSError):
                break
            if isinstance(event, Resident):
                continue  # which models it holds only matters when there are several workers
            if isinstance(event, Finished):
                with self.lock:
                    if self.job == event.job:
                        self.job = None
            if isinstance(event, Started):
                event = replace(event, runner=f"local worker (pid {process.pid})")
            self.inflight.seen(event)
            self._deliver(event)
        events.close()
        process.join(timeout=5)
        if self.closing:
            return
        with self.lock:
            lost = self.job
        log.warning("worker %s exited (code %s); starting a new one", process.pid, process.exitcode)
        self._deliver(WorkerDied(job=lost, exitcode=process.exitcode))
        for reply in self.inflight.lost("local"):
            self._deliver(reply)
        self._spawn()

    def _deliver(self, event: FromWorker) -> None:
        try:
            self.on_event(event)
        except Exception:  # a bad event must not stop the flow of the ones after it
            log.exception("handling worker event %s failed", type(event).__name__)

    def _send(self, message: ToWorker) -> None:
        with self.lock:
            if self.commands is None:
                raise RuntimeError("the executor is not started")
            try:
                self.commands.send(message)
            except (BrokenPipeError, OSError):
                log.warning("worker is gone; %s dropped (a new worker is starting)", type(message).__name__)

    def free_slots(self) -> int:
        with self.lock:
            alive = self.process is not None and self.process.is_alive()
            return 1 if alive and self.job is None else 0

    def submit(self, order: Order) -> None:
        with self.lock:
            if self.job is not None:
                raise RuntimeError(f"the worker is busy with job {self.job}")
            self.job = order.job_id
        self._send(RunJob(order))

    def cancel(self, job_id: int) -> None:
        self._send(Cancel(job_id))

    def request(self, message: Request | Stop) -> None:
        if isinstance(message, Request):
            self.inflight.sent(message.id, "local")
        self._send(message)

    def close(self) -> None:
        self.closing = True
        with self.lock:
            process, commands = self.process, self.commands
        if commands is not None:
            with contextlib.suppress(OSError):
                commands.send(Shutdown())
            commands.close()
        if process is not None:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        if self.pump is not None:
            self.pump.join(timeout=5)
