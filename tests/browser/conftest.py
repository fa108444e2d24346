"""Browser tests: Debian's Chromium driven by Playwright against a live server on the tiny model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from app.main import create_app
from tests.app.conftest import make_settings, wait_for
from tests.live import LiveServer, free_port

# Generous on purpose: a busy 2-core machine runs the worker, the server and Chromium at once.
TIMEOUT_MS = 180_000  # Playwright's waits
TIMEOUT_S = TIMEOUT_MS / 1000  # every HTTP call and condition wait
expect.set_options(timeout=TIMEOUT_MS)  # Playwright's assertions wait 5 s unless told otherwise
CHROMIUM = os.environ.get("STEERSCOPE_CHROMIUM", "/usr/bin/chromium")
EVIL_HOST = "evil.example"  # another site's name; the browser resolves it to this machine
ARTIFACTS = Path(os.environ.get("STEERSCOPE_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`.ci/run` does)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            f"--host-resolver-rules=MAP {EVIL_HOST} 127.0.0.1",
        ],
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    port = free_port()
    settings = make_settings(tmp_path_factory.mktemp("browser") / "data", tiny_dir, gallery_tokens=8)
    with LiveServer(create_app(settings), port) as server:
        yield server


@pytest.fixture(scope="session")
def shots() -> Path:
    """Where each page's screenshot goes (a CI artifact). Not emptied first: the suite's processes
    share it, and each screenshot has a name of its own."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def api(live: LiveServer) -> Iterator[httpx.Client]:
    """The live server's JSON API, with an explicit timeout on every call."""
    with httpx.Client(base_url=live.url, timeout=TIMEOUT_S) as client:
        yield client


def finished(api: httpx.Client, job_id: int, status: str = "succeeded") -> dict[str, Any]:
    """Wait for a job to end; fail unless it ended as `status`."""

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = api.get(f"/api/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    job: dict[str, Any] = wait_for(done, TIMEOUT_S, f"job {job_id} to finish")
    assert job["status"] == status, job
    return job


class Held:
    """Requests to a path held until the test lets them go: the button's busy state is looked at
    while its request is surely out."""

    def __init__(self, page: Page, pattern: str) -> None:
        self.routes: list[Route] = []
        self.page, self.pattern = page, pattern
        page.route(pattern, self.hold)

    def hold(self, route: Route) -> None:
        self.routes.append(route)

    def release(self) -> None:
        for route in self.routes:
            route.continue_()
        self.routes.clear()
        self.page.unroute(self.pattern, self.hold)


# Set before a page loads: what its live stream and its htmx requests did, in order, so a test that
# waits on a live page in vain can say whether the stream went quiet, failed or was never reopened.
TRACE_STREAM = """
window.streamTrace = [];
const traced = (name, detail) => window.streamTrace.push(
  `${(performance.now() / 1000).toFixed(2)} ${name}${detail ? " " + detail : ""}`);
for (const name of ["htmx:sseOpen", "htmx:sseError", "htmx:sseClose", "htmx:sendError",
                    "htmx:responseError", "htmx:swapError"]) {
  document.addEventListener(name, (e) => traced(name, e.detail?.xhr?.status));
}
document.addEventListener("htmx:sseMessage", (e) => traced("message", e.detail.type));
document.addEventListener("htmx:afterRequest", (e) => traced("request", e.detail.pathInfo?.requestPath));
"""


def trace_stream(page: Page) -> None:
    """Record the page's stream and requests from its next load on (read with `stream_trace`)."""
    page.add_init_script(TRACE_STREAM)


def stream_trace(page: Page) -> str:
    try:
        return "\n".join(page.evaluate("() => window.streamTrace || []"))
    except Exception as exc:  # the page itself may be what went wrong
        return f"(no trace: {exc})"


def where_it_stood(api: httpx.Client, page: Page) -> str:
    """For a live page that waited in vain: each job's state and what the page's stream did, to tell
    a slow page from a lost one."""
    jobs = [
        (j["id"], j["kind"], j["status"], j.get("error"), j.get("finished_at"))
        for j in api.get("/api/jobs").json()
    ]
    return f"jobs: {jobs}\nthe page's stream:\n{stream_trace(page)}"
