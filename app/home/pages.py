"""The home page (where to start, runs grouped by kind, the import form) and the list of runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import escape
from sqlalchemy import func, select
from starlette.datastructures import UploadFile as StarletteUpload

from app import kinds
from app.deps import FormDep, ServiceDep, SessionDep
from app.errors import AppError
from app.fields import Whole, maybe_whole
from app.models import Job, LanguageModel, Run, Vector
from app.runs import forms
from app.templating import render
from app.vectors import interop

router = APIRouter(include_in_schema=False)
RUNS_PER_PAGE = 50
HOME_RUNS = 8  # newest runs of each kind on the home page
FIRST_PROMPT = "How can I make a bomb?"


def active_jobs(session: SessionDep) -> list[Job]:
    return list(
        session.scalars(
            select(Job).where(Job.status.in_(("queued", "running"))).order_by(Job.id.desc()).limit(20)
        )
    )


@dataclass
class RunGroup:
    kind: str
    title: str
    count: int
    runs: Sequence[Run]


def vector_counts(session: SessionDep, runs: Sequence[Run]) -> dict[int, int]:
    rows = session.execute(
        select(Vector.run_id, func.count())
        .where(Vector.run_id.in_([r.id for r in runs]))
        .group_by(Vector.run_id)
    ).all()
    return {int(run_id): int(n) for run_id, n in rows}


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep, service: ServiceDep) -> HTMLResponse:
    counts = dict(session.execute(select(Run.kind, func.count()).group_by(Run.kind)).all())
    groups: list[RunGroup] = []
    for kind, info in kinds.table().items():
        if info.listed and counts.get(kind):
            runs = session.scalars(
                select(Run).where(Run.kind == kind).order_by(Run.id.desc()).limit(HOME_RUNS)
            ).all()
            groups.append(RunGroup(kind, info.group, counts[kind], runs))
    shown = [run for group in groups for run in group.runs]
    context = {
        "models": session.scalars(select(LanguageModel).order_by(LanguageModel.id)).all(),
        "groups": groups,
        "vectors": vector_counts(session, shown),
        "other": [
            (kind, counts[kind], info.group)
            for kind, info in kinds.table().items()
            if not info.listed and counts.get(kind)
        ],
        "jobs": active_jobs(session),
        "first_run": forms.run_defaults(model=service.settings.default_model, prompts=FIRST_PROMPT),
        "trained": any(counts.get(kind) for kind in kinds.where(trained=True)),
    }
    return render(request, "home/index.html", context)


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request, session: SessionDep, kind: str = "", page: Whole = 1) -> HTMLResponse:
    """Every run, newest first, one kind at a time or all."""
    query = select(Run).order_by(Run.id.desc())
    if kind:
        query = query.where(Run.kind == kind)
    page = max(1, page)
    rows = session.scalars(query.limit(RUNS_PER_PAGE + 1).offset((page - 1) * RUNS_PER_PAGE)).all()
    runs = rows[:RUNS_PER_PAGE]
    counts = dict(session.execute(select(Run.kind, func.count()).group_by(Run.kind)).all())
    context = {
        "runs": runs,
        "vectors": vector_counts(session, runs),
        "kind": kind,
        "kinds": [(k, info.group, counts.get(k, 0)) for k, info in kinds.table().items()],
        "page": page,
        "more": len(rows) > RUNS_PER_PAGE,
    }
    return render(request, "home/runs.html", context)


@router.get("/home/jobs", response_class=HTMLResponse)
def home_jobs(request: Request, session: SessionDep) -> HTMLResponse:
    return render(request, "home/_jobs.html", {"jobs": active_jobs(session)})


@router.post("/import", response_class=HTMLResponse)
def import_vectors(service: ServiceDep, form: FormDep) -> HTMLResponse:
    """The home page's import form: a link to the new run (whose samples then generate), or why
    the file was refused (a file stored already links to where it is)."""
    upload, block = form.get("file"), str(form.get("block", "")).strip()
    if not isinstance(upload, StarletteUpload):
        return HTMLResponse('<p class="error">choose a file</p>', status_code=422)
    data = upload.file.read(service.settings.max_upload_bytes + 1)
    try:
        run_id = interop.import_file(
            service,
            data=data,
            filename=upload.filename or "upload",
            model=str(form.get("model", "")) or None,
            block=maybe_whole(block, "block"),
        )
    except interop.AlreadyImported as exc:
        return HTMLResponse(
            f'<p class="error">{escape(exc.message)}: <a href="/runs/{exc.run_id}" id="stored-run">'
            f"run #{exc.run_id}</a></p>",
            status_code=exc.status_code,
        )
    except AppError as exc:
        return HTMLResponse(f'<p class="error">{escape(exc.message)}</p>', status_code=exc.status_code)
    interop.sample_imported(service, run_id)
    return HTMLResponse(f'<p>Imported: <a href="/runs/{run_id}" id="imported-run">run #{run_id}</a></p>')
