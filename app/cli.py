"""`steerscope`: serve the app, migrate the database, or run one job from the shell.

`train | chain | calibrate | generate | scale-sweep | rpath | generalize | search | concept |
dashboard` take the same
fields as the JSON API (their flags are made from the request bodies; a command that refines a
vector takes its id as `--vector-id`), run on a worker of their own, show tqdm progress and write
the same database as the server. A job started here is reserved for this process; if it dies, a running
server takes the job over once its heartbeat goes stale.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import types
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError, create_model
from sqlalchemy import select

from app import jobs, kinds, responses, schemas
from app.errors import AppError
from app.fields import Whole, describe
from app.models import Job, Run
from app.service import Service
from app.settings import Settings


def on_vector(
    body: type[schemas.Body], start: Callable[..., Job]
) -> tuple[type[schemas.Body], Callable[..., Job]]:
    """A command refining a stored vector: the API's body with the vector's id beside it (the API
    takes it in the path), and the start that splits the two again."""
    with_id: type[schemas.Body] = create_model(
        f"{body.__name__}OnVector",
        __base__=body,
        vector_id=(Whole, Field(description="The stored vector it starts from.")),
    )

    def begin(service: Service, given: schemas.Body, *, owner: str = "") -> Job:
        fields = given.model_dump(exclude_unset=True)
        vector_id = int(fields.pop("vector_id"))
        return start(service, vector_id, body.model_validate(fields), owner=owner)

    return with_id, begin


def commands() -> dict[str, tuple[type[schemas.Body], Callable[..., Any], str]]:
    """The job commands, one per kind of run that has one (the kinds table names them)."""
    out: dict[str, tuple[type[schemas.Body], Callable[..., Any], str]] = {}
    for info in kinds.table().values():
        if not info.command or info.launch is None or info.settings is None:
            continue
        body, start = info.settings, info.launch
        if info.on_vector:
            body, start = on_vector(body, start)
        out[info.command] = (body, start, info.about)
    return out


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, is a list) of a field's annotation, Optional and constraints stripped."""
    if get_origin(annotation) is Annotated:
        return _base_type(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return _base_type(next(a for a in get_args(annotation) if a is not type(None)))
    if get_origin(annotation) is list:
        return _base_type(get_args(annotation)[0])[0], True
    return annotation, False


def add_body_flags(parser: argparse.ArgumentParser, body: type[BaseModel]) -> None:
    for name, field in body.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind, many = _base_type(field.annotation)
        help_text = field.description or ""
        if kind is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif many:
            parser.add_argument(flag, dest=name, nargs="+", type=kind, default=None, help=help_text)
        else:
            choices = list(get_args(kind)) if get_origin(kind) is not None else None
            convert = str if choices else kind
            parser.add_argument(flag, dest=name, type=convert, choices=choices, default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerscope", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="migrate, then serve the web app with its worker")
    serve.add_argument("--host", help="address to bind (default STEERSCOPE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default STEERSCOPE_PORT or 8000)")
    worker = sub.add_parser("worker", help="join this machine to a Ray cluster, with its GPUs (ray start)")
    worker.add_argument("--address", required=True, help="the cluster head, HOST:PORT (its GCS port, 6379)")
    worker.add_argument("--num-gpus", type=int, help="GPUs to offer (default: every GPU Ray finds)")
    worker.add_argument("--num-cpus", type=int, help="CPUs to offer (default: every CPU)")
    db = sub.add_parser("db", help="database maintenance")
    db.add_argument("action", choices=["upgrade"], help="upgrade: apply every migration")
    export = sub.add_parser("export", help="write a vector (or a run's vectors, or an adapter) to a file")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--vector-id", type=int, help="one vector")
    which.add_argument("--run-id", type=int, help="all of a run's vectors (safetensors or json)")
    export.add_argument(
        "--format",
        default="safetensors",
        choices=["safetensors", "gguf", "json", "neuronpedia", "peft"],
        help="peft: a steering adapter as a zip of its PEFT LoRA folder",
    )
    export.add_argument("--out", required=True, help="the file to write")
    imp = sub.add_parser("import", help="store the vectors of a safetensors or GGUF file as a run")
    imp.add_argument("file", help="a .safetensors or .gguf file (never a pickle)")
    imp.add_argument("--model", help="the model the vectors belong to (default STEERSCOPE_DEFAULT_MODEL)")
    imp.add_argument("--block", type=int, help="the block they steer, when the file does not say")
    for command, (body, _, summary) in commands().items():
        p = sub.add_parser(command, help=summary)
        add_body_flags(p, body)
        p.add_argument(
            "--json", dest="spec_json", help="the request body as JSON (flags override its fields)"
        )
    return parser


SHUTDOWN_GRACE_S = 2  # requests still running this long after SIGTERM are cancelled


def body_from(args: argparse.Namespace, body: type[schemas.Body]) -> schemas.Body:
    data: dict[str, Any] = json.loads(args.spec_json) if args.spec_json else {}
    data.update({k: v for k, v in vars(args).items() if k in body.model_fields and v is not None})
    return body.model_validate(data)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_problem(settings: Settings) -> str:
    """Why the server cannot start with these settings, in one line; empty if it can."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import upgrade

    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=settings.data_dir):
            pass  # converted models are written here too
    except OSError as exc:
        return f"cannot write the data directory {settings.data_dir}: {exc.strerror or exc}"
    url = settings.resolved_database_url()
    try:
        upgrade(url)
    except SQLAlchemyError as exc:
        return f"cannot open the database {url}: {getattr(exc, 'orig', None) or exc}"
    except (CommandError, OSError) as exc:
        return f"cannot bring the database {url} up to date: {exc}"
    return ""


def serve(settings: Settings, host: str | None, port: int | None) -> int:
    import uvicorn

    from app.main import create_app

    host, port = host or settings.host, port or settings.port
    if not is_loopback(host) and not settings.token:
        print(f"refusing to bind {host} without an access token: set STEERSCOPE_TOKEN", file=sys.stderr)
        return 2
    settings = settings.model_copy(update={"host": host, "port": port})
    problem = startup_problem(settings)
    if problem:
        print(f"steerscope serve: {problem}", file=sys.stderr)
        return 2
    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
            # Event streams end now rather than when their clients leave, so the server need not
            # wait for them; the worker and its jobs stop in the app's shutdown right after.
            app.state.service.begin_shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=SHUTDOWN_GRACE_S
    )
    try:
        Server(config).run()
    except KeyboardInterrupt:
        # A Ctrl-C: uvicorn has shut down cleanly and raises the signal again to say so, which
        # asyncio turns into this exception. The exit status says it; a traceback would not help.
        return 128 + signal.SIGINT
    return 0


def worker(args: argparse.Namespace) -> int:
    """A thin wrapper around Ray's own node start: the machine joins the cluster and stays until
    stopped (Ctrl-C); the server then starts an actor on each of its devices."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray is None:
        print("steerscope worker: Ray is not installed here (pip install 'steerscope[ray]')", file=sys.stderr)
        return 2
    command = [ray, "start", "--address", args.address, "--block"]
    for flag, value in (("--num-gpus", args.num_gpus), ("--num-cpus", args.num_cpus)):
        if value is not None:
            command += [flag, str(value)]
    print("+ " + " ".join(command), file=sys.stderr)
    return subprocess.call(command)


def follow(service: Service, job_id: int) -> dict[str, Any]:
    """Show the job's progress with tqdm until it finishes; Ctrl-C cancels it (finished work stays)."""
    from tqdm import tqdm

    with (
        service.broker.subscribe(f"job:{job_id}") as sub,
        tqdm(total=1000, unit="‰", desc=f"job {job_id}") as bar,
    ):
        try:
            while True:
                sub.next_sync(1.0)  # wakes on any event of the job, or once a second
                with service.db.session() as session:
                    job = responses.job_out(jobs.get(session, job_id))
                bar.n = int(1000 * job["progress"])
                bar.set_postfix_str(job["message"][:60])
                bar.refresh()
                if job["status"] in jobs.FINISHED:
                    return job
        except KeyboardInterrupt:
            with service.db.session() as session:
                jobs.request_cancel(session, job_id)
            service.notify()
            print("\ncancelling; finished vectors are kept", file=sys.stderr)
            return follow(service, job_id)


def summary(service: Service, job: dict[str, Any]) -> dict[str, Any]:
    with service.db.session() as session:
        run = jobs.get(session, job["id"]).run
        out: dict[str, Any] = {"job": job, "run": responses.run_out(run)}
        out["vectors"] = [responses.vector_out(v) for v in run.vectors]
    return out


def twin_jobs(service: Service, run_id: int) -> list[Job]:
    with service.db.session() as session:
        return list(
            session.scalars(select(Job).join(Run, Job.run_id == Run.id).where(Run.twin_of == run_id)).all()
        )


def run_job(settings: Settings, command: str, body: schemas.Body) -> int:
    _, start, _ = commands()[command]
    service = Service(settings, owner=f"cli:{uuid.uuid4().hex[:12]}", claim_any=False)
    service.start()
    try:
        job = start(service, body, owner=service.owner)
        print(f"run {job.run_id}, job {job.id} queued", file=sys.stderr)
        done = follow(service, job.id)
        print(json.dumps(summary(service, done), indent=2))
        for twin in twin_jobs(service, job.run_id):  # reserved for this process: run them before leaving
            print(f"random twin: run {twin.run_id}, job {twin.id}", file=sys.stderr)
            follow(service, twin.id)
        if done["status"] == "failed":
            print(f"failed: {done['error']}", file=sys.stderr)
        return 0 if done["status"] == "succeeded" else 1
    finally:
        service.stop()


def files(settings: Settings, args: argparse.Namespace) -> int:
    """`export` and `import`: the engine reads and writes the files on a worker of this process."""
    from pathlib import Path

    from app.vectors import interop

    service = Service(settings, owner=f"cli:{uuid.uuid4().hex[:12]}", claim_any=False)
    service.start()
    try:
        if args.command == "export":
            if args.vector_id is not None and args.format == "peft":
                data, _ = interop.export_peft(service, args.vector_id)
            elif args.vector_id is not None:
                data, _ = interop.export_vector(service, args.vector_id, args.format)
            else:
                data, _ = interop.export_run(service, args.run_id, args.format)
            Path(args.out).write_bytes(data)
            print(f"wrote {args.out} ({len(data)} bytes)")
            return 0
        path = Path(args.file)
        if not path.is_file():
            print(f"steerscope import: no file {path}", file=sys.stderr)
            return 2
        run_id = interop.import_file(
            service, data=path.read_bytes(), filename=path.name, model=args.model, block=args.block
        )
        print(json.dumps({"run_id": run_id}))
        return 0
    finally:
        service.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    try:
        if args.command == "serve":
            return serve(settings, args.host, args.port)
        if args.command == "worker":
            return worker(args)
        if args.command == "db":
            from app.db import upgrade

            upgrade(settings.resolved_database_url())
            print(f"database at {settings.resolved_database_url()} is up to date")
            return 0
        if args.command in ("export", "import"):
            return files(settings, args)
        body = body_from(args, commands()[args.command][0])
        return run_job(settings, args.command, body)
    except ValidationError as exc:
        print(f"steerscope {args.command}: {describe(exc.errors())}", file=sys.stderr)
        return 2
    except AppError as exc:
        print(f"steerscope {args.command}: {exc.message}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"steerscope {args.command}: --json is not valid JSON ({exc})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
