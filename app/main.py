"""The web app: `create_app(settings)` builds one; each test builds its own."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import AppError, NotFound
from app.replies import ChatHub
from app.routes import (
    api_chat,
    api_data,
    api_export,
    api_interop,
    api_jobs,
    api_runs,
    chat_pages,
    compare_pages,
    label_pages,
    new_run_pages,
    pages,
    run_pages,
    vector_pages,
)
from app.service import Service
from app.settings import ROOT, Settings
from app.templating import make_templates

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, service: Service | None = None) -> FastAPI:
    """The app; its service (database, worker, dispatcher) starts with the app's lifespan."""
    settings = settings or Settings()
    service = service or Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
    )
    app.state.settings = settings
    app.state.service = service
    app.state.templates = make_templates()
    app.mount("/static", StaticFiles(directory=str(ROOT / "static")), name="static")
    app.state.chat = ChatHub(service)
    pages_ = (pages, new_run_pages, run_pages, vector_pages, compare_pages, chat_pages, label_pages)
    for module in (*pages_, api_runs, api_jobs, api_data, api_chat, api_export, api_interop):
        app.include_router(module.router)

    @app.exception_handler(AppError)
    async def app_error(request: Request, exc: AppError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.message}, status_code=exc.status_code)
        context = {"status": exc.status_code, "message": exc.message}
        response: Response = app.state.templates.TemplateResponse(
            request, "error.html", context, status_code=exc.status_code
        )
        return response

    @app.exception_handler(StarletteHTTPException)
    async def no_such_page(request: Request, exc: StarletteHTTPException) -> Response:
        """A page that does not exist is an HTML page with a way back; the API answers JSON."""
        if exc.status_code != 404 or request.url.path.startswith("/api/"):
            return await http_exception_handler(request, exc)
        return await app_error(request, NotFound(f"there is no page at {request.url.path}"))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only where and what: the offending input may not even be JSON-encodable (NaN, inf).
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        problems = [
            "the request body is not valid JSON"
            if e["type"] == "json_invalid"
            else f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}"
            for e in errors
        ]
        return JSONResponse({"detail": "; ".join(problems), "errors": errors}, status_code=422)

    if settings.token:
        token = settings.token

        @app.middleware("http")
        async def require_token(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            given = (
                given or request.query_params.get("token", "") or request.cookies.get("steerscope_token", "")
            )
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"detail": "an access token is required"}, status_code=401)
            response = await call_next(request)
            if request.query_params.get("token"):  # a browser that came with ?token= keeps it
                response.set_cookie("steerscope_token", token, httponly=True, samesite="strict")
            return response

    return app
