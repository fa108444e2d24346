"""Who may talk to the server: the Host names it serves, the access token, and same-origin writes.

- Host: the server answers only to the names it serves (loopback names, the address it binds, and
  `allowed_hosts`), so a page that rebinds its own DNS name to 127.0.0.1 reads nothing.
- Origin: a request that changes something (any method but GET, HEAD, OPTIONS) and comes from a
  page of another origin (the browser's `Sec-Fetch-Site` says cross-site or same-site, or its
  `Origin`, or else its `Referer`, names another host) is refused, so another site's page cannot
  make a visiting browser write here. Clients that send none of these (curl, scripts) are not
  browsers and pass. Everything that makes the worker compute is such a write (a POST), except
  the vector-file exports, reads that refuse another site's page the same way (`refuse_cross_site`).
- Token: with an access token set, every request carries it (`Authorization: Bearer`, `?token=`
  or the cookie a browser gets the first time). Where the cookie alone authenticates, a write must
  also carry the CSRF token the pages embed (header `X-CSRF-Token` or form field `csrf_token`).
- Every response says `Referrer-Policy: same-origin` (a URL with a token never leaves the site in
  a Referer), and refuses to be framed by another site.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import Forbidden

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_COOKIE = "steerscope_token"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SECURITY_HEADERS = [
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
]


def served_hosts(bind: str, allowed: str) -> frozenset[str] | None:
    """The host names to answer to; None answers to any (`allowed` is "*")."""
    extra = {h.strip().lower().strip("[]") for h in allowed.split(",") if h.strip()}
    if "*" in extra:
        return None
    names = set(LOOPBACK) | extra
    if bind not in ("", "0.0.0.0", "::"):
        names.add(bind.lower().strip("[]"))
    return frozenset(names)


def host_name(netloc: str) -> str:
    """'Example.org:8000' -> 'example.org'; '[::1]:80' -> '::1'; '' for something unparseable."""
    try:
        return (urlsplit(f"//{netloc}").hostname or "").lower()
    except ValueError:
        return ""


def _origin_netloc(url: str) -> str | None:
    """The host[:port] a page's origin (or a Referer URL) names, default ports left out."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[parts.scheme]
    return host if port in (None, default) else f"{host}:{port}"


def _own_netloc(host_header: str) -> str:
    host = host_header.lower()
    for default in (":80", ":443"):
        if host.endswith(default):
            return host.removesuffix(default)
    return host


def foreign_origin(headers: Any) -> str | None:
    """The other origin a write came from, or None if it came from this server's own pages (or from
    no page at all)."""
    own = _own_netloc(headers.get("host", ""))
    origin = headers.get("origin")
    if origin is not None:
        return None if _origin_netloc(origin) == own else origin
    referer = headers.get("referer")
    if referer:
        return None if _origin_netloc(referer) == own else referer
    return None


def cross_site(headers: Any) -> str | None:
    """The other site a browser's request came from, in words, or None if it came from this
    server's own pages, from an address typed or bookmarked (`Sec-Fetch-Site: none`) or from no
    page at all. A browser says `Sec-Fetch-Site` on every request, even where a page hides its
    Referer and sends no Origin (an image, a no-cors fetch); older browsers are judged by those."""
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {site}"
    return foreign_origin(headers)


async def refuse_cross_site(request: Request) -> None:
    """A read that makes the worker compute (a vector file the worker writes) is for this server's
    own pages and for scripts only: another site's page must not keep the worker busy through a
    visiting browser. (Anything that writes is checked by the middleware already.)"""
    other = cross_site(request.headers)
    if other is not None:
        raise Forbidden(f"refused: this request came from a page of another site ({other[:100]})")


def csrf_value(token: str) -> str:
    """The CSRF token for pages of a server with this access token (derived, so nothing is stored)."""
    return hmac.new(token.encode(), b"steerscope csrf", hashlib.sha256).hexdigest()[:32]


def _bearer(header: str) -> str:
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


class Guard:
    """Pure ASGI middleware (it leaves streaming responses and disconnects alone)."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str] | None, token: str) -> None:
        self.app, self.hosts, self.token = app, hosts, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        extra = list(SECURITY_HEADERS)
        if self.token and request.query_params.get("token"):
            # A browser that came with ?token= gets the cookie; a page is reloaded without the token
            # in its address, so it stays out of the history and of links copied from there.
            cookie = Response()
            cookie.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            extra.append((b"set-cookie", cookie.headers["set-cookie"].encode()))
            if request.method == "GET" and _wants_page(request):
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
                await RedirectResponse(target, status_code=303, headers=_as_dict(extra))(scope, receive, send)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Response | None:
        host = request.headers.get("host", "")
        if self.hosts is not None and host_name(host) not in self.hosts:
            return _refuse(
                request,
                400,
                f"this server does not answer to the host name {host[:100]!r}; "
                "add it to STEERSCOPE_ALLOWED_HOSTS to serve it",
            )
        if self.token:
            given = _bearer(request.headers.get("authorization", "")) or request.query_params.get("token", "")
            by_cookie = not given
            given = given or request.cookies.get(TOKEN_COOKIE, "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _refuse(request, 401, "an access token is required")
            request.scope.setdefault("state", {})["cookie_auth"] = by_cookie
        if request.method not in SAFE_METHODS:
            other = cross_site(request.headers)
            if other is not None:
                return _refuse(
                    request, 403, f"refused: this request came from a page of another site ({other[:100]})"
                )
        return None


def _wants_page(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "") and not request.url.path.startswith("/api/")


def _as_dict(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in headers}


def _refuse(request: Request, status: int, message: str) -> Response:
    response: Response
    if request.url.path.startswith("/api/") or "application/json" in request.headers.get("accept", ""):
        response = JSONResponse({"detail": message}, status_code=status)
    else:
        response = PlainTextResponse(message, status_code=status)
    response.headers.update(_as_dict(SECURITY_HEADERS))
    return response


async def check_csrf(request: Request) -> None:
    """A write authenticated by the cookie alone must carry the pages' CSRF token (an app-wide
    dependency, so that a form's field can be read without consuming the body)."""
    if request.method in SAFE_METHODS or not request.scope.get("state", {}).get("cookie_auth"):
        return
    token: str = request.app.state.settings.token
    given = request.headers.get(CSRF_HEADER, "")
    content_type = request.headers.get("content-type", "")
    if not given and content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        given = str((await request.form()).get(CSRF_FIELD, ""))
    if not hmac.compare_digest(given.encode(), csrf_value(token).encode()):
        raise Forbidden("refused: the form is missing its CSRF token; reload the page and try again")


class RedactTokens(logging.Filter):
    """Access-log lines show `?token=[redacted]`, never the token itself."""

    PATTERN = re.compile(r"(?i)\b(token=)[^&\s\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.PATTERN.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args
            )
        elif isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1[redacted]", record.msg)
        return True


def redact_tokens(loggers: Iterable[str] = ("uvicorn.access", "uvicorn.error")) -> None:
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
