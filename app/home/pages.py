"""The home page (where to start, runs grouped by kind), the list of runs, and the jobs page."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import escape
from sqlalchemy import func, select
from starlette.datastructures import UploadFile as StarletteUpload

from app import jobs
from app.deps import ServiceDep, SessionDep
from app.errors import AppError
from app.fields import Whole, maybe_whole
from app.models import Job, LanguageModel, Run, Vector
from app.runs import forms
from app.templating import render
from app.vectors import interop

router = APIRouter(include_in_schema=False)
JOBS_PER_PAGE = 50
RUNS_PER_PAGE = 50
HOME_RUNS = 8  # newest runs of each kind on the home page
# Kinds of run a person made to find behaviours, as the home page groups them.
KINDS = (
    ("melbo", "MELBO runs"),
    ("random", "Random baselines"),
    ("dct", "DCT runs"),
    ("adapter", "Adapter runs"),
    ("chain", "Chains"),
    ("compose", "Compositions"),
    ("import", "Imported vectors"),
    ("rpath", "R-paths"),
    ("generalize", "Generalizations"),
    ("search", "Searches"),
)
# Bookkeeping: work done for another page (a calibration, a vector's samples), counted, not listed.
OTHER_TITLES = {
    "calibrate": "calibrations",
    "generate": "sample jobs",
    "score": "scorings",
    "detect": "judge runs",
    "scale_sweep": "scale sweeps",
}
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
    for kind, title in KINDS:
        if counts.get(kind):
            runs = session.scalars(
                select(Run).where(Run.kind == kind).order_by(Run.id.desc()).limit(HOME_RUNS)
            ).all()
            groups.append(RunGroup(kind, title, counts[kind], runs))
    shown = [run for group in groups for run in group.runs]
    context = {
        "models": session.scalars(select(LanguageModel).order_by(LanguageModel.id)).all(),
        "groups": groups,
        "vectors": vector_counts(session, shown),
        "other": [(kind, counts[kind], title) for kind, title in OTHER_TITLES.items() if counts.get(kind)],
        "jobs": active_jobs(session),
        "first_run": forms.run_defaults(model=service.settings.default_model, prompts=FIRST_PROMPT),
        "trained": any(counts.get(kind) for kind in ("melbo", "random", "dct", "adapter", "chain")),
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
        "kinds": [(k, title, counts.get(k, 0)) for k, title in (*KINDS, *OTHER_TITLES.items())],
        "page": page,
        "more": len(rows) > RUNS_PER_PAGE,
    }
    return render(request, "home/runs.html", context)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep, page: Whole = 1, status: str = "") -> HTMLResponse:
    query = select(Job).order_by(Job.id.desc())
    if status in jobs.STATUSES:
        query = query.where(Job.status == status)
    page = max(1, page)
    rows = session.scalars(query.limit(JOBS_PER_PAGE + 1).offset((page - 1) * JOBS_PER_PAGE)).all()
    context = {
        "jobs": rows[:JOBS_PER_PAGE],
        "page": page,
        "more": len(rows) > JOBS_PER_PAGE,
        "status": status,
        "statuses": jobs.STATUSES,
        "partial": bool(request.headers.get("HX-Request")),
    }
    return render(request, "jobs/_table.html" if context["partial"] else "jobs/index.html", context)


@router.post("/jobs/{job_id}/cancel", response_class=HTMLResponse)
def cancel(job_id: Whole, request: Request, service: ServiceDep) -> HTMLResponse:
    return render(request, "jobs/_row.html", {"job": service.change_job(jobs.request_cancel, job_id)})


@router.post("/jobs/{job_id}/retry", response_class=HTMLResponse)
def retry(job_id: Whole, request: Request, service: ServiceDep) -> HTMLResponse:
    return render(request, "jobs/_row.html", {"job": service.change_job(jobs.retry, job_id)})


@router.get("/home/jobs", response_class=HTMLResponse)
def home_jobs(request: Request, session: SessionDep) -> HTMLResponse:
    return render(request, "home/_jobs.html", {"jobs": active_jobs(session)})


@router.post("/import", response_class=HTMLResponse)
async def import_vectors(request: Request, service: ServiceDep) -> HTMLResponse:
    """The home page's import form: a link to the new run (whose samples then generate), or why
    the file was refused (a file stored already links to where it is)."""
    form = await request.form()
    upload, block = form.get("file"), str(form.get("block", "")).strip()
    if not isinstance(upload, StarletteUpload):
        return HTMLResponse('<p class="error">choose a file</p>', status_code=422)
    data = await upload.read(service.settings.max_upload_bytes + 1)
    try:
        run_id = await asyncio.to_thread(
            lambda: interop.import_file(
                service,
                data=data,
                filename=upload.filename or "upload",
                model=str(form.get("model", "")) or None,
                block=maybe_whole(block, "block"),
            )
        )
    except interop.AlreadyImported as exc:
        return HTMLResponse(
            f'<p class="error">{escape(exc.message)}: <a href="/runs/{exc.run_id}" id="stored-run">'
            f"run #{exc.run_id}</a></p>",
            status_code=exc.status_code,
        )
    except AppError as exc:
        return HTMLResponse(f'<p class="error">{escape(exc.message)}</p>', status_code=exc.status_code)
    await asyncio.to_thread(interop.sample_imported, service, run_id)
    return HTMLResponse(f'<p>Imported: <a href="/runs/{run_id}" id="imported-run">run #{run_id}</a></p>')
