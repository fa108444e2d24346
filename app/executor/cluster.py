"""Workers on a Ray cluster: one actor per device, each running the same compute loop as the local
worker, the server as the Ray driver.

Jobs go to free actors, preferring one that already holds the job's model; an interactive request
goes to an actor holding its model (one without a job first). Events come back in order per actor
and are handed on one at a time, so the recorder sees them as it would from one local worker. An
actor that dies (its process killed, its node lost) is reported like a dead local worker: its job
is queued again and resumes from what it stored, its pending requests are answered with an error,
and a new actor takes its place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from app.executor.inflight import Inflight
from app.executor.protocol import (
    Cancel,
    Finished,
    FromWorker,
    Order,
    Ready,
    Reply,
    Request,
    Resident,
    RunJob,
    Shutdown,
    Started,
    Stop,
    WorkerDied,
)

log = logging.getLogger(__name__)
GROW_EVERY_S = 5.0  # how often free_slots() looks for capacity that joined the cluster


@dataclass
class _Actor:
    name: str
    handle: Any
    ready: bool = False
    job: int | None = None
    models: set[str] = field(default_factory=set)
    node: str = ""
    pid: int | None = None
    alive: bool = True

    @property
    def runner(self) -> str:
        return f"{self.name} on {self.node or 'a node'} (pid {self.pid})"


class RayExecutor:
    def __init__(
        self, config: dict[str, Any], *, address: str, actors: int = 0, cpus_per_actor: float = 1.0
    ) -> None:
        self.config = config  # handed to each actor: device, dtype, data_dir, threads, train_share
        self.address, self.wanted, self.cpus = address, actors, cpus_per_actor
        self.lock = threading.Lock()
        self.deliver_lock = threading.Lock()
        self.actors: dict[str, _Actor] = {}
        self.inflight = Inflight()
        self.on_event: Callable[[FromWorker], None] = lambda event: None
        self.closing = False
        self.owns_ray = False
        self.spawned = 0
        self.checked = 0.0
        self.waiting: list[Request] = []  # requests sent before any actor was ready

    # lifecycle

    def start(self, on_event: Callable[[FromWorker], None]) -> None:
        import ray

        self.on_event = on_event
        if not ray.is_initialized():
            # "local" starts a private cluster on this machine; otherwise join the one given.
            address = None if self.address == "local" else self.address
            ray.init(address=address, include_dashboard=False)
            self.owns_ray = True
        self._grow()

    def close(self) -> None:
        import ray

        self.closing = True
        with self.lock:
            actors = list(self.actors.values())
        for actor in actors:
            try:
                actor.handle.put.remote(Shutdown())
                ray.kill(actor.handle)
            except Exception:  # already gone
                log.debug("actor %s was already gone", actor.name)
        if self.owns_ray:
            ray.shutdown()

    def _capacity(self) -> int:
        """Actors the cluster can hold: the configured number, or one per GPU, or per CPU share."""
        import ray

        if self.wanted:
            return self.wanted
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        return gpus or max(1, int(resources.get("CPU", 1) // self.cpus))

    def _grow(self) -> None:
        self.checked = time.monotonic()
        with self.lock:
            missing = self._capacity() - sum(a.alive for a in self.actors.values())
        for _ in range(max(0, missing)):
            self._spawn()

    def _spawn(self) -> None:
        import ray

        from app.executor.actor import WorkerActor

        gpu = ray.cluster_resources().get("GPU", 0) >= 1
        with self.lock:
            self.spawned += 1
            name = f"worker-{self.spawned}"
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": 1 if gpu else 0, "max_restarts": 0}
        handle = WorkerActor.options(**options).remote(self.config)  # type: ignore[attr-defined]
        actor = _Actor(name, handle)
        with self.lock:
            self.actors[name] = actor
        threading.Thread(target=self._pump, args=(actor,), name=f"steerscope-{name}", daemon=True).start()

    def _pump(self, actor: _Actor) -> None:
        """Hand on the actor's events in order; when it dies, say so and start another."""
        import ray

        try:
            for ref in actor.handle.events.remote():
                for event in ray.get(ref):
                    self._receive(actor, event)
        except Exception as exc:  # the actor died: its process, or its node
            if not self.closing:
                log.warning("actor %s is gone (%s)", actor.name, type(exc).__name__)
        with self.lock:
            actor.alive = actor.ready = False
            lost, actor.job = actor.job, None
        if self.closing:
            return
        self._deliver(WorkerDied(job=lost, runner=actor.runner))
        for reply in self.inflight.lost(actor.name):
            self._deliver(reply)
        with self.lock:
            del self.actors[actor.name]
        self._spawn()

    def _receive(self, actor: _Actor, event: FromWorker) -> None:
        if isinstance(event, Resident):
            with self.lock:
                actor.models = set(event.models)
            return
        if isinstance(event, Ready):
            with self.lock:
                actor.ready, actor.node, actor.pid = True, event.node, event.pid
                waiting, self.waiting = self.waiting, []
            for message in waiting:
                self.request(message)
        elif isinstance(event, Started):
            event = replace(event, runner=actor.runner)
        elif isinstance(event, Finished):
            with self.lock:
                if actor.job == event.job:
                    actor.job = None
        self.inflight.seen(event)
        self._deliver(event)

    def _deliver(self, event: FromWorker) -> None:
        with self.deliver_lock:  # one event at a time, whichever actor sent it
            try:
                self.on_event(event)
            except Exception:  # a bad event must not stop the flow of the ones after it
                log.exception("handling worker event %s failed", type(event).__name__)

    # work

    def free_slots(self) -> int:
        if time.monotonic() - self.checked > GROW_EVERY_S and not self.closing:
            self._grow()  # a node that joined since brings its devices
        with self.lock:
            return sum(a.ready and a.job is None for a in self.actors.values())

    def submit(self, order: Order) -> None:
        model = str(order.spec.get("model", "default"))
        with self.lock:
            free = [a for a in self.actors.values() if a.ready and a.job is None]
            if not free:
                raise RuntimeError("no actor is free")
            actor = min(free, key=lambda a: (model not in a.models, a.name))
            actor.job = order.job_id
        actor.handle.put.remote(RunJob(order))

    def cancel(self, job_id: int) -> None:
        with self.lock:
            holders = [a for a in self.actors.values() if a.job == job_id]
        for actor in holders:
            actor.handle.put.remote(Cancel(job_id))

    def request(self, message: Request | Stop) -> None:
        if isinstance(message, Stop):
            self._stop(message.id)
            return
        with self.lock:
            actor = self._pick(message.model)
            if actor is None:
                self.waiting.append(message)  # sent on once the first actor is up
                return
            self.inflight.sent(message.id, actor.name)
        actor.handle.put.remote(message)

    def _stop(self, rid: str) -> None:
        """Stop a request where it went; one still waiting for an actor is answered here."""
        where = self.inflight.where(rid)
        with self.lock:
            actor = self.actors.get(where) if where else None
            waited = [m for m in self.waiting if m.id == rid]
            self.waiting = [m for m in self.waiting if m.id != rid]
        if actor is not None:
            actor.handle.put.remote(Stop(rid))
        elif waited:
            self._deliver(Reply(id=rid, ok=False, error="stopped before it started"))

    def _pick(self, model: str) -> _Actor | None:
        """The actor for an interactive request: one holding its model, one without a job first."""
        ready = [a for a in self.actors.values() if a.ready]
        if not ready:
            return None
        return min(ready, key=lambda a: (model not in a.models, a.job is not None, a.name))

    # for tests and the jobs page

    def runners(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {"name": a.name, "node": a.node, "pid": a.pid, "job": a.job, "models": sorted(a.models)}
                for a in self.actors.values()
                if a.alive
            ]
