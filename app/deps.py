"""Typed dependencies for routes.

Routes are plain `def` functions: FastAPI runs them in its thread pool, so a database that makes
a write wait (a lock held by another process) holds up that request alone, never the event loop
that every other request and stream shares. What must be awaited (the request's form) comes in as
a dependency, read on the event loop before the route's thread starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Cookie, Depends, Request
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app.service import Service


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def get_session(request: Request) -> Iterator[Session]:
    with get_service(request).db.session() as session:
        yield session


async def read_form(request: Request) -> FormData:
    """The request's form (its body awaited here, on the event loop; parsed once per request)."""
    return await request.form()


ServiceDep = Annotated[Service, Depends(get_service)]
SessionDep = Annotated[Session, Depends(get_session)]
FormDep = Annotated[FormData, Depends(read_form)]
AuthorCookie = Annotated[str | None, Cookie(alias="steerscope_author")]  # who labels, remembered per browser
