"""The web app: `create_app(settings)` builds one; each test builds its own."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import guard, health
from app.chat import api as chat_api
from app.chat import pages as chat_pages
from app.chat.hub import ChatHub
from app.concepts import api as concepts_api
from app.concepts import pages as concepts_pages
from app.discovery import api as discovery_api
from app.discovery import pages as discovery_pages
from app.errors import AppError, Invalid, NotFound, Unavailable
from app.fields import describe, plain
from app.generations import api as generations_api
from app.home import pages as home_pages
from app.jobs import api as jobs_api
from app.jobs import pages as jobs_pages
from app.labels import api as labels_api
from app.labels import pages as labels_pages
from app.refine import api as refine_api
from app.refine import pages as refine_pages
from app.refine import runs_api as refine_runs_api
from app.refine import runs_pages as refine_runs_pages
from app.runs import api as runs_api
from app.runs import new as runs_new
from app.runs import pages as runs_pages
from app.service import Service
from app.settings import ROOT, Settings
from app.sweeps import api as sweeps_api
from app.sweeps import pages as sweeps_pages
from app.tables import api as tables_api
from app.templating import make_templates
from app.vectors import api as vectors_api
from app.vectors import compare as vectors_compare
from app.vectors import pages as vectors_pages

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, service: Service | None = None) -> FastAPI:
    """The app; its service (database, worker, dispatcher) starts with the app's lifespan."""
    settings = settings or Settings()
    service = service or Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        guard.redact_tokens()  # after the server set up its logging
        service.start()
        app.state.chat.recover()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="steerscope",
        summary="Train, browse and chat with unsupervised steering vectors.",
        lifespan=lifespan,
        dependencies=[Depends(guard.check_csrf)],
    )
    app.add_middleware(
        guard.Guard, hosts=guard.served_hosts(settings.host, settings.allowed_hosts), token=settings.token
    )
    app.state.settings = settings
    app.state.service = service
    app.state.templates = make_templates()
    app.mount("/static", StaticFiles(directory=str(ROOT / "static")), name="static")
    app.state.chat = ChatHub(service)
    pages = (
        home_pages,
        jobs_pages,
        runs_new,
        runs_pages,
        vectors_pages,
        refine_pages,
        refine_runs_pages,
        vectors_compare,
        chat_pages,
        labels_pages,
        sweeps_pages,
        discovery_pages,
        concepts_pages,
    )
    apis = (
        runs_api,
        refine_api,
        refine_runs_api,
        sweeps_api,
        jobs_api,
        generations_api,
        chat_api,
        tables_api,
        vectors_api,
        discovery_api,
        concepts_api,
        labels_api,
        health,
    )
    for module in (*pages, *apis):
        app.include_router(module.router)

    def for_api(request: Request) -> bool:
        """The API answers errors in JSON; every other address is a page and answers an HTML page."""
        return request.url.path.startswith("/api/")

    @app.exception_handler(AppError)
    async def app_error(request: Request, exc: AppError) -> Response:
        if for_api(request):
            return JSONResponse({"detail": exc.message}, status_code=exc.status_code)
        context = {"status": exc.status_code, "message": exc.message}
        response: Response = app.state.templates.TemplateResponse(
            request, "error.html", context, status_code=exc.status_code
        )
        return response

    @app.exception_handler(StarletteHTTPException)
    async def no_such_page(request: Request, exc: StarletteHTTPException) -> Response:
        """A page that does not exist is an HTML page with a way back; the API answers JSON."""
        if exc.status_code != 404 or for_api(request):
            return await http_exception_handler(request, exc)
        return await app_error(request, NotFound(f"there is no page at {request.url.path}"))

    @app.exception_handler(OperationalError)
    async def database_busy(request: Request, exc: OperationalError) -> Response:
        # Another process holds the database (a long write, a backup): not the user's fault, and
        # nothing was written; the request can simply be sent again.
        log.warning(
            "%s %s: the database refused the request (%s)", request.method, request.url.path, exc.orig
        )
        return await app_error(request, Unavailable("the database is busy; try again in a moment"))

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError | ValidationError) -> Response:
        problems = [
            "the request body is not valid JSON" if e["type"] == "json_invalid" else describe([e])
            for e in exc.errors()
        ]
        if not for_api(request):  # a page (/runs/abc): the error page, with the way back
            return await app_error(request, Invalid("; ".join(problems)))
        # Only where and what: the offending input may not even be JSON-encodable (NaN, inf).
        errors = [{"loc": list(e["loc"]), "msg": plain(e), "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems), "errors": errors}, status_code=422)

    return app
