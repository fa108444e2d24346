"""The jobs page: every job, newest first, filtered by status, with cancel and retry."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from app import jobs
from app.deps import ServiceDep, SessionDep
from app.fields import Whole
from app.models import Job
from app.templating import render

router = APIRouter(include_in_schema=False)
JOBS_PER_PAGE = 50


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
