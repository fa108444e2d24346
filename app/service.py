"""The service behind the web app and the CLI: database, executor, dispatcher and recorder together.

The dispatcher is a thread that hands queued jobs to free workers, forwards cancel requests,
keeps the heartbeats of running jobs fresh, and queues again jobs whose runner vanished.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app import jobs, kinds, store
from app.broker import Broker
from app.db import Database
from app.errors import Invalid, Unavailable, WorkerFailed
from app.executor import Executor, LocalExecutor, Order
from app.executor.protocol import Reply, Request, Stop, Validate
from app.models import Job, Run
from app.recorder import Recorder
from app.settings import Settings
from app.writer import refusal

log = logging.getLogger(__name__)
SERVER_OWNER = "server"  # one server per database: at its start, jobs it was running are orphans
STOP_WRITES_S = 2.0  # at shutdown, how long results still arriving may wait for a busy database


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        owner: str = SERVER_OWNER,
        claim_any: bool = True,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.owner = owner
        self.claim_any = claim_any  # the server takes any queued job; a CLI process only its own
        self.db = Database(settings.resolved_database_url())
        self.broker = Broker()
        self.executor: Executor = executor or make_executor(settings)
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.recorder = Recorder(
            self.db,
            self.broker,
            max_attempts=settings.max_attempts,
            gallery_tokens=settings.gallery_tokens,
            auto_score=settings.auto_score,
            wake=self.wakeup.set,
            cancel=lambda job_id: self.executor.cancel(job_id),
        )
        self.thread: threading.Thread | None = None
        self.cancels_sent: set[tuple[int, int]] = set()  # (job, attempt): each attempt is told once
        self.dispatch_error = ""  # why the last dispatcher pass failed, if it did

    # lifecycle

    def start(self) -> None:
        self.db.upgrade()
        with self.db.session() as session:
            orphans = (self.owner,) if self.owner == SERVER_OWNER else ()
            for job in jobs.requeue_interrupted(
                session, owners=orphans, stale_before=jobs.stale_cutoff(self.settings.lease_s)
            ):
                log.info("job %s was interrupted; queued again", job.id)
        self.recorder.start()
        self.executor.start(self.recorder)
        self.thread = threading.Thread(target=self._dispatch_loop, name="steerscope-dispatcher", daemon=True)
        self.thread.start()

    def begin_shutdown(self) -> None:
        """The server is going down: every event stream and every request waiting on the worker ends
        now, so the web server has no open connection to wait for."""
        self.broker.close()

    def stop(self) -> None:
        """Stop the worker at once and queue the jobs it was running again (they resume from what
        they stored); everything the worker sent before it stopped is written first."""
        self.begin_shutdown()
        self.stopping.set()
        self.wakeup.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.executor.close()
        self.recorder.stop(timeout=STOP_WRITES_S)
        try:
            with self.db.session() as session:
                for job in jobs.requeue_interrupted(session, owners=(self.owner,), stale_before=jobs.EPOCH):
                    log.info("job %s queued again: the server stopped", job.id)
        except OperationalError as exc:
            log.warning("could not queue the running jobs again (%s); the next start does", exc.orig)
        self.db.close()

    # dispatching

    def _dispatch_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.dispatch_once()
                self.dispatch_error = ""
            except OperationalError as exc:
                if refusal(exc) == "permanent":  # shown by the health check until a pass succeeds
                    log.exception("dispatcher pass failed: the database refuses it")
                    self.dispatch_error = str(exc.orig)[:500]
                else:  # busy or locked: the next pass tries again
                    log.warning("dispatcher pass skipped: %s", exc.orig)
            except Exception as exc:
                log.exception("dispatcher pass failed")
                self.dispatch_error = f"{type(exc).__name__}: {exc}"[:500]
            self.wakeup.wait(self.settings.heartbeat_s)
            self.wakeup.clear()

    def dispatch_once(self) -> None:
        with self.db.session() as session:
            mine = session.scalars(select(Job).where(Job.status == "running", Job.owner == self.owner)).all()
            jobs.beat(session, [j.id for j in mine])
            for job in mine:
                if job.cancel_requested and (job.id, job.attempts) not in self.cancels_sent:
                    self.executor.cancel(job.id)
                    self.cancels_sent.add((job.id, job.attempts))
            jobs.requeue_interrupted(
                session, owners=(), stale_before=jobs.stale_cutoff(self.settings.lease_s)
            )
        while self.executor.free_slots() > 0:
            # The claim is a compare-and-set: a job cancelled meanwhile is passed over, and a cancel
            # that comes after it finds the job running and is forwarded above at the next pass.
            with self.db.session() as session:
                claimed = jobs.claim_next(session, owner=self.owner, any_owner=self.claim_any)
                if claimed is None:
                    return
                order = self.order_for(session, claimed)
            self.executor.submit(order)

    def order_for(self, session: Session, job: Job) -> Order:
        """What the worker needs: the task and spec, and what earlier attempts stored (so it resumes)."""
        run: Run = job.run
        info = kinds.of(run.kind)
        if info.task is None:
            raise RuntimeError(f"job {job.id}: a {run.kind} run has no worker task")
        theta0 = None
        if run.parent_vector_id is not None:
            theta0 = store.get_vector(session, run.parent_vector_id).values
        gallery: dict[str, Any] = {"batch": self.settings.gallery_batch}
        if info.gallery:
            tokens = self.settings.gallery_tokens
            gallery.update(
                prompts=run.prompts,
                max_new_tokens=tokens,
                done=store.gallery_done(session, run, run.prompts, tokens),
                probe=info.working_scale,
                # Working scales an earlier attempt found: probed once, not again.
                working={v.index: v.working_scale for v in run.vectors if v.working_scale is not None},
            )
        # A generate job's vectors, or the ones a refinement stays orthogonal to.
        read = run.inputs.get("vector_ids") or run.inputs.get("orthogonal_to") or []
        asked = [store.get_vector(session, i) for i in read]
        vectors = [(v.id, v.block, v.values) for v in asked]
        own = run.vectors if info.adapters else []  # a resumed adapter run's stored adapters
        spec = {**run.spec, **(info.order(session, run) if info.order else {})}
        return Order(
            job_id=job.id,
            attempt=job.attempts,
            kind=run.kind,
            task=info.task,
            spec=spec,
            done=[v.values for v in run.vectors],
            theta0=theta0,
            vectors=vectors,
            gallery=gallery,
            adapters=[store.adapter_payload(v) for v in (*own, *asked) if v.adapter is not None],
        )

    def notify(self) -> None:
        """Something changed in the queue: dispatch now rather than at the next heartbeat."""
        self.wakeup.set()

    def change_job(self, action: Callable[[Session, int], Job], job_id: int) -> Job:
        """Apply a queue action (cancel, retry) in its own transaction, then dispatch at once."""
        with self.db.session() as session:
            job = action(session, job_id)
        self.notify()  # a cancel of a running job is forwarded to its worker by the next pass
        return job

    # interactive requests

    def ask(self, message: Request, *, timeout: float | None = None) -> Any:
        """Send an interactive request to a worker and wait for its reply (from any thread but the loop)."""
        what = type(message).__name__
        with self.broker.subscribe(f"request:{message.id}") as sub:
            self.executor.request(message)
            limit = timeout or self.settings.request_timeout_s
            while True:
                event = sub.next_sync(limit)
                if event is None:
                    self.executor.request(Stop(message.id))
                    if sub.closed:
                        raise Unavailable("the server is shutting down; try again once it is back")
                    raise Unavailable(f"the worker did not answer within {limit:.0f} s")
                if isinstance(event, Reply):
                    if event.ok:
                        return event.value
                    if event.internal:
                        log.error("the worker failed on a %s request:\n%s", what, event.trace)
                        raise WorkerFailed(f"the worker failed on a {what} request")
                    raise Invalid(event.error)

    def validate(self, kind: str, spec: dict[str, Any], *, reserve: int = 0) -> dict[str, Any]:
        """Check a spec against its model on the worker; the normalized spec and the model's info."""
        model = spec.get("model") or self.settings.default_model
        value: dict[str, Any] = self.ask(
            Validate(model=model, kind=kind, spec={**spec, "model": model}, reserve=reserve)
        )
        return value


def make_executor(settings: Settings) -> Executor:
    """The executor the settings ask for (Ray is imported only when it is the one)."""
    if settings.executor == "ray":
        from app.executor.cluster import RayExecutor

        return RayExecutor(
            worker_config(settings),
            address=settings.ray_address,
            actors=settings.ray_actors,
            cpus_per_actor=settings.ray_cpus_per_actor,
        )
    return LocalExecutor(worker_config(settings))


def worker_config(settings: Settings) -> dict[str, Any]:
    return {
        "device": settings.device,
        "dtype": settings.dtype,
        "data_dir": str(settings.data_dir),
        "threads": settings.worker_threads,
        "train_share": settings.train_share,
        "prefix_cache_mb": settings.prefix_cache_mb,
        "nice": 5,
    }
