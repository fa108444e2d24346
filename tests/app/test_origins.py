"""No cross-site writes: foreign origins and host names are refused over HTTP, nothing another site's
page asks makes the worker compute; the token's hygiene."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient
from safetensors.numpy import save

from app.guard import csrf_value
from app.main import create_app
from app.settings import Settings
from tests.app.conftest import make_settings, wait_job
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


CROSS_SITE = (
    {"Origin": "http://evil.example", "Referer": "http://evil.example/", "Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "cross-site"},  # a page that hides its Referer, a request that sends no Origin
    {"Sec-Fetch-Site": "same-site"},  # another port of this host is another origin
    {"Referer": "http://evil.example/page.html"},  # an older browser
)


class Spy:
    """Counts what reaches the worker: requests (generate, downstream, files) and jobs."""

    def __init__(self, client: TestClient) -> None:
        self.executor = client.app.state.service.executor
        self.sent: list[str] = []

    def __enter__(self) -> Spy:
        request, submit = self.executor.request, self.executor.submit
        self.executor.request = lambda m: (self.sent.append(type(m).__name__), request(m))[1]
        self.executor.submit = lambda o: (self.sent.append(f"job {o.job_id}"), submit(o))[1]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.executor.request, self.executor.submit


def imported_vectors(client: TestClient, seed: int) -> list[int]:
    """Two vectors imported from a file of their own (the module's tests share one database, and
    the same file is refused a second time)."""
    values = np.random.default_rng(seed).standard_normal((2, 64)).astype(np.float32)
    r = client.post(
        "/api/imports", files={"file": ("o.safetensors", save({"vectors": values}))}, data={"block": "1"}
    )
    assert r.status_code == 201, r.text
    for job in r.json()["sample_jobs"]:
        wait_job(client, job)
    return list(r.json()["vector_ids"])


def test_another_sites_page_cannot_start_a_reading_or_a_concept(client: TestClient) -> None:
    """Reading a vector and making a concept are jobs, detecting with one a worker request: each is a
    POST that only the app's own pages (and scripts) may send."""
    a, _ = imported_vectors(client, seed=5)
    concept = {"positive": ["a b", "c d"], "negative": ["e f", "g h"]}
    starts = [
        ("POST", f"/api/vectors/{a}/dashboard", {"json": {}}),
        ("POST", f"/vectors/{a}/dashboard", {"data": {"rank_by": "max"}}),
        ("POST", "/api/concepts", {"json": concept}),
        ("POST", "/concepts", {"data": {"positive": "a b\nc d", "negative": "e f\ng h"}}),
        ("POST", "/api/concepts/1/detect", {"json": {"prompts": ["x"]}}),
        ("POST", "/concepts/1/detect", {"data": {"prompts": "x"}}),
    ]
    before = row_counts(client)
    for headers in CROSS_SITE:
        with Spy(client) as spy:
            for method, path, kw in starts:
                r = client.request(method, path, headers=headers, **kw)
                assert r.status_code == 403 and "another site" in r.text, (method, path, headers, r.text)
        assert spy.sent == [], (headers, spy.sent)
    assert row_counts(client) == before
    # Reading what is stored is a plain GET, and computes nothing.
    with Spy(client) as spy:
        assert client.get(f"/api/vectors/{a}/dashboard", headers=CROSS_SITE[0]).status_code == 404
        assert client.get(f"/vectors/{a}/dashboard", headers=CROSS_SITE[0]).status_code == 200
    assert spy.sent == []


def test_nothing_another_sites_page_asks_makes_the_worker_compute(client: TestClient) -> None:
    a, b = imported_vectors(client, seed=6)
    compute = [  # every route that makes the worker compute, as a page of ours would call it
        ("POST", "/compare/downstream", {"data": {"ids": f"{a},{b}", "prompt": "x"}}),
        ("POST", "/compare/cell", {"data": {"vector_id": str(a), "prompt": "x", "max_new_tokens": "2"}}),
        ("POST", f"/vectors/{a}/generate", {"data": {"prompt": "y", "max_new_tokens": "2"}}),
        ("POST", "/runs/preview", {"data": {"prompts": "z"}}),
        ("POST", "/api/generations", {"json": {"prompt": "w", "max_new_tokens": 2}}),
        ("GET", f"/api/vectors/{a}/export?format=safetensors", {}),
        ("GET", f"/api/vectors/{a}/export?format=gguf", {}),
        ("GET", f"/api/runs/{client.get(f'/api/vectors/{a}').json()['run_id']}/export", {}),
    ]
    for headers in CROSS_SITE:
        with Spy(client) as spy:
            for method, path, kw in compute:
                r = client.request(method, path, headers=headers, **kw)
                assert r.status_code == 403 and "another site" in r.text, (method, path, headers, r.text)
            # The downstream cosines were a GET: as one, another site's page finds no such route.
            r = client.get("/compare/downstream", params={"ids": f"{a},{b}", "prompt": "x"}, headers=headers)
            assert r.status_code == 405
        assert spy.sent == [], (headers, spy.sent)
    # The app's own pages (and scripts, and an address typed in) still make it compute.
    for headers in (
        {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
        {},
    ):
        with Spy(client) as spy:
            for method, path, kw in compute:
                r = client.request(method, path, headers=headers, **kw)
                assert r.status_code == 200, (method, path, headers, r.text[:300])
        assert len(spy.sent) >= 4, spy.sent  # the rest were answered from the table
