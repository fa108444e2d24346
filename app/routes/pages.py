"""HTML pages."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from app.deps import SessionDep
from app.models import Job, LanguageModel, Run

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep) -> HTMLResponse:
    context = {
        "models": session.scalars(select(LanguageModel).order_by(LanguageModel.id)).all(),
        "runs": session.scalars(select(Run).order_by(Run.id.desc()).limit(20)).all(),
        "jobs": session.scalars(
            select(Job).where(Job.status.in_(("queued", "running"))).order_by(Job.id.desc()).limit(20)
        ).all(),
    }
    response: HTMLResponse = request.app.state.templates.TemplateResponse(request, "home/index.html", context)
    return response
