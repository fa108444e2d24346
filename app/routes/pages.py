"""The home page and the jobs page."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import escape
from sqlalchemy import select
from starlette.datastructures import UploadFile as StarletteUpload

from app import interop, jobs
from app.deps import ServiceDep, SessionDep
from app.errors import AppError
from app.models import Job, LanguageModel, Run
from app.routes.run_pages import render

router = APIRouter(include_in_schema=False)
JOBS_PER_PAGE = 50


def active_jobs(session: SessionDep) -> list[Job]:
    return list(
        session.scalars(
            select(Job).where(Job.status.in_(("queued", "running"))).order_by(Job.id.desc()).limit(20)
        )
    )


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep) -> HTMLResponse:
    context = {
        "models": session.scalars(select(LanguageModel).order_by(LanguageModel.id)).all(),
        "runs": session.scalars(
            select(Run).where(Run.kind != "compose").order_by(Run.id.desc()).limit(20)
        ).all(),
        "jobs": active_jobs(session),
    }
    return render(request, "home/index.html", context)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep, page: int = 1, status: str = "") -> HTMLResponse:
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
def cancel(job_id: int, request: Request, service: ServiceDep) -> HTMLResponse:
    return render(request, "jobs/_row.html", {"job": service.change_job(jobs.request_cancel, job_id)})


@router.post("/jobs/{job_id}/retry", response_class=HTMLResponse)
def retry(job_id: int, request: Request, service: ServiceDep) -> HTMLResponse:
    return render(request, "jobs/_row.html", {"job": service.change_job(jobs.retry, job_id)})


@router.get("/home/jobs", response_class=HTMLResponse)
def home_jobs(request: Request, session: SessionDep) -> HTMLResponse:
    return render(request, "home/_jobs.html", {"jobs": active_jobs(session)})


@router.post("/import", response_class=HTMLResponse)
async def import_vectors(request: Request, service: ServiceDep) -> HTMLResponse:
    """The home page's import form: a link to the new run, or why the file was refused."""
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
                block=int(block) if block.lstrip("-").isdigit() else None,
            )
        )
    except AppError as exc:
        return HTMLResponse(f'<p class="error">{escape(exc.message)}</p>', status_code=exc.status_code)
    return HTMLResponse(f'<p>Imported: <a href="/runs/{run_id}" id="imported-run">run #{run_id}</a></p>')
