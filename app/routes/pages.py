"""The home page and the jobs page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from app import jobs
from app.deps import ServiceDep, SessionDep
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
    with service.db.session() as session:
        jobs.request_cancel(session, job_id)
    service.notify()
    with service.db.session() as session:
        return render(request, "jobs/_row.html", {"job": jobs.get(session, job_id)})


@router.post("/jobs/{job_id}/retry", response_class=HTMLResponse)
def retry(job_id: int, request: Request, service: ServiceDep) -> HTMLResponse:
    with service.db.session() as session:
        jobs.retry(session, job_id)
    service.notify()
    with service.db.session() as session:
        return render(request, "jobs/_row.html", {"job": jobs.get(session, job_id)})


@router.get("/home/jobs", response_class=HTMLResponse)
def home_jobs(request: Request, session: SessionDep) -> HTMLResponse:
    return render(request, "home/_jobs.html", {"jobs": active_jobs(session)})
