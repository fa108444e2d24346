"""No cross-site writes: foreign origins and host names are refused over HTTP; the token's hygiene."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient

from app.guard import csrf_value
from app.main import create_app
from app.settings import Settings
from tests.app.conftest import make_settings
from tests.app.helpers import row_counts
from tests.live import LiveServer, free_port

TIMEOUT = 60.0


def label_form(name: str) -> dict[str, str]:
    return {"name": name, "colour": "#123456", "description": ""}


def test_a_foreign_origin_cannot_write(client: TestClient) -> None:
    before = row_counts(client)
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://testserver:8102"},  # same name, another port: another origin
        {"Referer": "http://evil.example/page.html"},
    ):
        r = client.post("/labels", data=label_form("cross-site"), headers=headers)
        assert r.status_code == 403 and "another site" in r.text, headers
        r = client.post("/api/jobs/1/retry", headers=headers)
        assert r.status_code == 403 and "another site" in r.json()["detail"], headers
        r = client.post("/api/conversations", json={"title": "x"}, headers=headers)
        assert r.status_code == 403, headers
    assert row_counts(client) == before
    # Reads are not writes: another page may link here.
    assert client.get("/api/runs", headers={"Origin": "http://evil.example"}).status_code == 200


def test_the_apps_own_pages_still_write(client: TestClient) -> None:
    own = {"Origin": "http://testserver", "Referer": "http://testserver/labels"}
    r = client.post("/labels", data=label_form("same-site"), headers=own, follow_redirects=False)
    assert r.status_code == 303
    assert "same-site" in {x["name"] for x in client.get("/api/labels").json()}
    r = client.post("/api/conversations", json={}, headers={"Referer": "http://testserver/chat"})
    assert r.status_code == 201
    # Clients that are not browsers send neither header.
    assert client.post("/api/conversations", json={}).status_code == 201


def test_a_foreign_host_name_is_refused(client: TestClient) -> None:
    for host in ("evil.example", "evil.example:8102", "127.0.0.1.evil.example", ""):
        r = client.get("/api/export/vectors.csv", headers={"Host": host})
        assert r.status_code == 400 and "does not answer to the host name" in r.text, host
    for host in ("testserver", "localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert client.get("/api/runs", headers={"Host": host}).status_code == 200, host


def test_every_response_keeps_urls_to_itself(client: TestClient) -> None:
    for r in (client.get("/"), client.get("/api/runs"), client.get("/api/runs/999999")):
        assert r.headers["referrer-policy"] == "same-origin"
        assert r.headers["x-frame-options"] == "DENY"


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[tuple[str, Settings]]:
    """A real server with an access token, reached over real HTTP."""
    port = free_port()
    settings = make_settings(tmp_path_factory.mktemp("token") / "data", tiny_dir, token="s3cret")
    with LiveServer(create_app(settings), port) as server:
        yield server.url, settings


def test_the_token_scheme_is_case_insensitive(token_server: tuple[str, Settings]) -> None:
    url, _ = token_server
    for scheme in ("Bearer", "bearer", "BEARER"):
        r = httpx.get(f"{url}/api/runs", headers={"Authorization": f"{scheme} s3cret"}, timeout=TIMEOUT)
        assert r.status_code == 200, scheme
    assert httpx.get(f"{url}/api/runs", timeout=TIMEOUT).status_code == 401
    r = httpx.get(f"{url}/api/runs", headers={"Authorization": "Basic s3cret"}, timeout=TIMEOUT)
    assert r.status_code == 401


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_token_in_the_url_stays_out_of_logs_and_addresses(token_server: tuple[str, Settings]) -> None:
    url, _ = token_server
    access, seen = logging.getLogger("uvicorn.access"), Lines()
    level = access.level
    access.setLevel(logging.INFO)
    access.addHandler(seen)
    try:
        r = httpx.get(f"{url}/api/runs?token=s3cret", timeout=TIMEOUT)
        assert r.status_code == 200 and r.cookies.get("steerscope_token") == "s3cret"
        page = httpx.get(
            f"{url}/jobs?status=queued&token=s3cret", headers={"Accept": "text/html"}, timeout=TIMEOUT
        )
    finally:
        access.removeHandler(seen)
        access.setLevel(level)
    # A page reloads without the token in its address (and keeps its other parameters).
    assert page.status_code == 303 and page.headers["location"] == "/jobs?status=queued"
    lines = seen.lines
    assert any("token=[redacted]" in line for line in lines), lines
    assert not any("s3cret" in line for line in lines), lines


def test_where_the_cookie_authenticates_forms_need_the_csrf_token(
    token_server: tuple[str, Settings],
) -> None:
    url, settings = token_server
    with httpx.Client(base_url=url, timeout=TIMEOUT, cookies={"steerscope_token": "s3cret"}) as browser:
        page = browser.get("/labels")
        meta = BeautifulSoup(page.text, "html.parser").find("meta", attrs={"name": "csrf-token"})
        assert meta is not None and meta["content"] == csrf_value(settings.token)
        r = browser.post("/labels", data=label_form("no-csrf"), follow_redirects=False)
        assert r.status_code == 403 and "CSRF" in r.text
        r = browser.post(
            "/labels", data={**label_form("with-csrf"), "csrf_token": meta["content"]}, follow_redirects=False
        )
        assert r.status_code == 303
        r = browser.post("/api/conversations", json={}, headers={"X-CSRF-Token": str(meta["content"])})
        assert r.status_code == 201
        assert browser.post("/api/conversations", json={}).status_code == 403
    # A script with the token in its header is no browser: it needs no CSRF token.
    r = httpx.post(
        f"{url}/api/conversations", json={}, headers={"Authorization": "Bearer s3cret"}, timeout=TIMEOUT
    )
    assert r.status_code == 201
    names = {x["name"] for x in httpx.get(f"{url}/api/labels?token=s3cret", timeout=TIMEOUT).json()}
    assert "with-csrf" in names and "no-csrf" not in names
