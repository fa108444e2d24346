"""The compute loop: the one owner of the worker's models. Nothing else runs a forward pass.

Work reaches it as messages and is carried out in small units, one at a time:
- quick requests (check a spec, render prompts, check a chat, downstream cosines, vector files)
  and the admission of chat and generation requests into the interactive decode batch;
- one decode step of the interactive batch (chat replies and generations, continuously batched);
- one unit of the running job (a training step, a calibration probe, a gallery decode step).

The scheduler runs quick requests first, then interactive decode steps, except that the job gets
at least `train_share` of the loop's recent time while both have work, so training is never
starved by a busy chat. Commands (cancel, stop, shutdown) take effect between two units. A decode
step of the interactive batch gives way between two blocks when a message arrives (every other
decode step at most), so a new reply's prefill does not wait out a whole step of a large batch.
A job's unit gives way too: its passes over blocks pause when a message arrives, and the loop
handles the message, runs quick requests and prefills new replies right there, then lets the pass
go on (engine/steer/pauses.py); what the unit computes is the same bit for bit.

A chat is checked (`check_chat`) just before it is sent; once a check passed, the loop waits up to
CHAT_FOLLOWS_S for that chat before it starts another unit, so the reply does not also wait out a
training step or a decode step started in the moment between the two messages.
"""

from __future__ import annotations

import logging
import math
import queue
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from app.executor import quick, tasks
from app.executor.generations import Generations
from app.executor.job import Job, Units
from app.executor.protocol import (
    Cancel,
    Chat,
    CheckChat,
    Finished,
    FromWorker,
    Generate,
    Order,
    Reply,
    Request,
    Resident,
    RunJob,
    Shutdown,
    Stop,
    ToWorker,
)
from app.executor.resident import Models
from engine import EngineError
from engine.steer.pauses import giving_way

log = logging.getLogger("steerscope.worker")
SHARE_WINDOW_S = 5.0  # the scheduler's memory: time spent decays with this time constant
INTERNAL = "internal error (the worker's log has the traceback)"
CHAT_FOLLOWS_S = 0.25  # how long a passed chat check holds the loop for its chat (it comes in ms)


class _Running:
    """The job being carried out: its reporting and its units."""

    def __init__(self, order: Order, send: Callable[[FromWorker], None], data: str) -> None:
        self.order = order
        self.job = Job(order, send, data)
        self.units: Units | None = None  # started by the loop's first unit of the job

    @property
    def model(self) -> str:
        return str(self.order.spec.get("model", "default"))


class ComputeLoop:
    def __init__(self, send: Callable[[FromWorker], None], config: dict[str, Any]) -> None:
        self.send = send
        self.models = Models(config, lambda names: send(Resident(names)))
        self.inbox: queue.SimpleQueue[ToWorker] = queue.SimpleQueue()  # filled from any thread
        self.quick: deque[Request] = deque()
        self.jobs: deque[Order] = deque()
        self.running: _Running | None = None
        self.stopping: set[str] = set()  # generations stopped before they were admitted
        self.prefix_bytes = int(float(config.get("prefix_cache_mb", 256)) * 2**20)
        self.generations = Generations(send, self.prefix_bytes)
        self.train_share = float(config.get("train_share", 0.5))
        self.spent = {"job": 0.0, "interactive": 0.0}  # decayed seconds per kind of unit
        self.stamp = time.monotonic()
        self.open = True
        self.chat_due_by: float | None = None  # a chat check passed: its chat is on its way
        self.lent_s = 0.0  # seconds of interactive work run inside the unit under way

    # messages

    def put(self, message: ToWorker) -> None:
        """Hand the loop a message (thread-safe); it is applied between two units."""
        self.inbox.put(message)

    def _take(self, block: bool, timeout: float = 1.0) -> None:
        """Apply every message waiting (waiting up to `timeout` for one first if asked)."""
        try:
            message = self.inbox.get(timeout=timeout) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(message)
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _apply(self, message: ToWorker) -> None:
        match message:
            case RunJob(order=order):
                self.jobs.append(order)
            case Cancel(job=job_id):
                self._cancel(job_id)
            case Stop(id=rid):
                self.generations.stop(rid)
                if any(m.id == rid for m in self.quick):
                    self.stopping.add(rid)  # not admitted yet: it ends, empty, at its first step
            case Shutdown():
                self.open = False
            case Request():
                self.quick.append(message)

    def _cancel(self, job_id: int) -> None:
        if self.running is not None and self.running.order.job_id == job_id:
            self.running.job.cancelled = True
        for order in [o for o in self.jobs if o.job_id == job_id]:
            self.jobs.remove(order)
            self._finished(order, "cancelled", "")

    # the loop

    def run(self) -> None:
        """Until shut down: apply messages, then run the next unit."""
        while self.open:
            follow = 0.0 if self.quick else self._chat_follows_s()
            if follow > 0:
                self._take(block=True, timeout=follow)
            else:
                self._take(block=not self.has_work())
            if self.open:
                self.run_once()

    def _chat_follows_s(self) -> float:
        """How much longer to wait for the chat whose check passed (0: none is awaited)."""
        if self.chat_due_by is None:
            return 0.0
        left = self.chat_due_by - time.monotonic()
        if left <= 0:
            self.chat_due_by = None
        return max(left, 0.0)

    def has_work(self) -> bool:
        return bool(self.quick or self.generations or self.running or self.jobs)

    def run_once(self) -> str | None:
        """Run the next unit the policy picks; what kind it was (None: nothing to do)."""
        if self.quick:
            kind = "interactive"
            self._timed(kind, self._quick, self.quick.popleft())
        elif self.generations and not (self._job_waiting() and self._job_due()):
            kind = "interactive"
            self._timed(kind, self._generation_step)
        elif self._job_waiting():
            kind = "job"
            self._timed(kind, self._job_unit)
        else:
            return None
        return kind

    def _job_waiting(self) -> bool:
        return self.running is not None or bool(self.jobs)

    def _job_due(self) -> bool:
        """Whether the job has had less than its share of the loop's recent time."""
        total = self.spent["job"] + self.spent["interactive"]
        return total == 0 or self.spent["job"] / total < self.train_share

    def _timed(self, kind: str, unit: Callable[..., None], *args: Any) -> None:
        began = time.monotonic()
        self.lent_s = 0.0
        unit(*args)
        now = time.monotonic()
        decay = math.exp(-(now - self.stamp) / SHARE_WINDOW_S)
        for key in self.spent:
            self.spent[key] *= decay
        # Interactive work run while a job's unit was paused counts as interactive.
        self.spent[kind] += now - began - self.lent_s
        self.spent["interactive"] += self.lent_s
        self.stamp = now

    # units

    def _quick(self, message: Request) -> None:
        rid = message.id
        if isinstance(message, Chat):
            self.chat_due_by = None  # the awaited chat (or another): admitted now
        stopped = rid in self.stopping
        self.stopping.discard(rid)
        try:
            lm = self.models.get(message.model, self._in_use())
            if isinstance(message, Chat | Generate):
                self.generations.admit(lm, message)
                if stopped:
                    self.generations.stop(rid)
                return  # answered when its rows finish
            value = quick.answer(lm, message)
        except Exception as exc:
            self._fail(rid, exc)
            return
        if isinstance(message, CheckChat):
            self.chat_due_by = time.monotonic() + CHAT_FOLLOWS_S
        self.send(Reply(id=rid, ok=True, value=value))

    def _generation_step(self) -> None:
        try:
            self.generations.step(preempt=self._message_waiting)
        except Exception as exc:  # a broken batch fails its requests, not the loop
            for rid in list(self.generations.requests):
                self._fail(rid, exc)
            self.generations = Generations(self.send, self.prefix_bytes)

    def _message_waiting(self) -> bool:
        return not self.inbox.empty()

    def _between_blocks(self) -> None:
        """A job's unit paused between two blocks (engine/steer/pauses.py): the messages that came,
        quick requests, and the first tokens of replies just admitted. Their later tokens wait for
        the unit's end, where the share of time between job and chat is kept as usual."""
        began = time.monotonic()
        self._take(block=False)
        while self.quick:
            self._quick(self.quick.popleft())
        try:
            self.generations.first_tokens()
        except Exception as exc:  # as in `_generation_step`: the batch's requests fail, not the job
            for rid in list(self.generations.requests):
                self._fail(rid, exc)
            self.generations = Generations(self.send, self.prefix_bytes)
        self.lent_s += time.monotonic() - began

    def _job_unit(self) -> None:
        if self.running is None:
            self.running = _Running(self.jobs.popleft(), self.send, str(self.models.config["data_dir"]))
        running = self.running
        try:
            lm = self.models.get(running.model, self._in_use())
            if running.units is None:
                running.units = tasks.run(lm, running.job, self.models.embedder)
            with giving_way(lm.model, self._message_waiting, self._between_blocks):
                next(running.units)
            return
        except StopIteration as end:
            status, error = ("cancelled" if end.value else "succeeded"), ""
        except EngineError as exc:
            status, error = "failed", str(exc)
        except Exception:
            log.exception("job %s failed", running.order.job_id)
            status, error = "failed", INTERNAL
        self.running = None
        self._finished(running.order, status, error)

    # replies

    def _in_use(self) -> set[str]:
        used = self.generations.models()
        if self.running is not None:
            used.add(self.running.model)
        return used

    def _finished(self, order: Order, status: str, error: str) -> None:
        self.send(Finished(order.job_id, order.attempt, status=status, error=error))

    def _fail(self, rid: str, exc: Exception) -> None:
        if isinstance(exc, EngineError):
            self.send(Reply(id=rid, ok=False, error=str(exc)))
            return
        trace = "".join(traceback.format_exception(exc))
        log.error("request %s failed:\n%s", rid, trace)
        self.send(Reply(id=rid, ok=False, internal=True, error="internal error", trace=trace))
