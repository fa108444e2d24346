"""Typed dependencies for routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Cookie, Depends, Request
from sqlalchemy.orm import Session

from app.service import Service


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def get_session(request: Request) -> Iterator[Session]:
    with get_service(request).db.session() as session:
        yield session


ServiceDep = Annotated[Service, Depends(get_service)]
SessionDep = Annotated[Session, Depends(get_session)]
AuthorCookie = Annotated[str | None, Cookie(alias="steerscope_author")]  # who labels, remembered per browser
