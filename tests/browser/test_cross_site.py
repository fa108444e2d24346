"""No cross-site writes, in a real browser: a page on another origin that auto-submits a form to the
app is refused, a host name the app does not serve is refused, and the app's own forms still work.
Nothing another site's page does makes the worker compute: its fetches, images and forms aimed at
routes that compute are refused, and an app page it sends the browser to waits for a click."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, Response, expect
from safetensors.numpy import save

from tests.app.conftest import wait_for
from tests.browser.conftest import EVIL_HOST, TIMEOUT_S
from tests.live import LiveServer, free_port

TIMEOUT = 120_000


def label_names(live: LiveServer) -> set[str]:
    return {x["name"] for x in httpx.get(f"{live.url}/api/labels", timeout=60).json()}


@pytest.fixture(scope="module")
def evil_site(live: LiveServer) -> Iterator[str]:
    """Another origin whose page posts a label form to the app as soon as it loads."""
    page = f"""<!doctype html><title>win a prize</title>
<form method="post" action="{live.url}/labels">
  <input name="name" value="pwned"><input name="colour" value="#ff0000">
</form>
<script>document.forms[0].submit()</script>"""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = page.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{EVIL_HOST}:{port}/prize.html"
    server.shutdown()


def test_a_page_on_another_origin_cannot_post_a_form(
    page: Page, live: LiveServer, evil_site: str, shots: Path
) -> None:
    page.set_default_timeout(TIMEOUT)
    with page.expect_response(lambda r: r.url == f"{live.url}/labels") as answer:
        page.goto(evil_site)
    assert answer.value.status == 403
    expect(page.locator("body")).to_contain_text("another site", timeout=TIMEOUT)
    page.screenshot(path=shots / "30-cross-site-refused.png", full_page=True)
    assert "pwned" not in label_names(live)


def test_a_host_name_the_app_does_not_serve_is_refused(page: Page, live: LiveServer) -> None:
    page.set_default_timeout(TIMEOUT)
    port = live.url.rsplit(":", 1)[1]
    # The name resolves to the app's own address, as after a DNS rebinding attack.
    response = page.goto(f"http://{EVIL_HOST}:{port}/api/export/labels.csv")
    assert response is not None and response.status == 400
    expect(page.locator("body")).to_contain_text("does not answer to the host name", timeout=TIMEOUT)


def test_the_apps_own_label_form_still_works(page: Page, live: LiveServer) -> None:
    page.set_default_timeout(TIMEOUT)
    page.goto(f"{live.url}/labels")
    form = page.locator("#new-label")
    form.locator("input[name='name']").fill("own-form")
    form.locator("button[type='submit']").first.click()
    expect(page.locator("input[name='name'][value='own-form']")).to_have_count(1, timeout=TIMEOUT)
    assert "own-form" in label_names(live)


class OtherSite:
    """Another origin serving whatever pages a test puts in `pages` (path -> HTML)."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = site.pages.get(self.path, "not here").encode()
                self.send_response(200 if self.path in site.pages else 404)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)

    def url(self, path: str) -> str:
        return f"http://{EVIL_HOST}:{self.port}{path}"


@pytest.fixture(scope="module")
def other_site() -> Iterator[OtherSite]:
    site = OtherSite()
    threading.Thread(target=site.server.serve_forever, daemon=True).start()
    yield site
    site.server.shutdown()


@pytest.fixture
def worker_asked(live: LiveServer) -> Iterator[list[str]]:
    """What reaches the live server's worker while the test runs (requests and jobs)."""
    executor, sent = live.app.state.service.executor, []
    request, submit = executor.request, executor.submit
    executor.request = lambda m: (sent.append(type(m).__name__), request(m))[1]
    executor.submit = lambda o: (sent.append(f"job {o.job_id}"), submit(o))[1]
    yield sent
    del executor.request, executor.submit


@pytest.fixture(scope="module")
def two_vectors(live: LiveServer) -> tuple[int, int]:
    values = np.random.default_rng(9).standard_normal((2, 64)).astype(np.float32)
    with httpx.Client(base_url=live.url, timeout=TIMEOUT_S) as api:
        r = api.post(
            "/api/imports", files={"file": ("x.safetensors", save({"vectors": values}))}, data={"block": "1"}
        )
        assert r.status_code == 201, r.text
        for job in r.json()["sample_jobs"]:  # its samples are done: the worker is quiet after this
            wait_for(lambda job=job: api.get(f"/api/jobs/{job}").json()["status"] == "succeeded", TIMEOUT_S)
        a, b = r.json()["vector_ids"]
    return a, b


def answers(page: Page, wanted: Callable[[Response], bool]) -> list[Response]:
    """The responses the page gets that `wanted` picks, as they come (see `until`)."""
    seen: list[Response] = []
    page.on("response", lambda r: seen.append(r) if wanted(r) else None)
    return seen


def until(page: Page, condition: Callable[[], bool], what: Callable[[], str]) -> None:
    """Wait for `condition`, letting Playwright deliver the page's events meanwhile."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what()}"
        page.wait_for_timeout(50)


def test_another_sites_page_cannot_make_the_worker_compute(
    page: Page, live: LiveServer, other_site: OtherSite, two_vectors: tuple[int, int], worker_asked: list[str]
) -> None:
    page.set_default_timeout(TIMEOUT)
    a, b = two_vectors
    app = live.url
    generation = json.dumps({"prompt": "from elsewhere", "max_new_tokens": 4})
    concept = json.dumps({"positive": ["a b", "c d"], "negative": ["e f", "g h"]})
    other_site.pages["/busy.html"] = f"""<!doctype html><title>free game</title>
<iframe src="{app}/api/vectors/{a}/export?format=safetensors"></iframe>
<iframe src="{app}/api/runs/1/export" referrerpolicy="no-referrer"></iframe>
<form method="post" action="{app}/runs/preview" target="sink"><input name="prompts" value="x"></form>
<iframe name="sink"></iframe>
<script>
  const form = new URLSearchParams({{ids: "{a},{b}", prompt: "x"}});
  fetch("{app}/compare/downstream", {{method: "POST", mode: "no-cors", body: form}});
  fetch("{app}/compare/downstream?ids={a},{b}&prompt=x", {{mode: "no-cors", referrerPolicy: "no-referrer"}});
  fetch("{app}/api/generations", {{method: "POST", mode: "no-cors", referrerPolicy: "no-referrer",
    headers: {{"content-type": "text/plain"}}, body: {json.dumps(generation)}}});
  fetch("{app}/vectors/{a}/dashboard",
    {{method: "POST", mode: "no-cors", body: new URLSearchParams({{rank_by: "max"}})}});
  fetch("{app}/api/concepts", {{method: "POST", mode: "no-cors", referrerPolicy: "no-referrer",
    headers: {{"content-type": "text/plain"}}, body: {json.dumps(concept)}}});
  document.forms[0].submit();
</script>"""
    seen = answers(page, lambda r: r.url.startswith(app))
    page.goto(other_site.url("/busy.html"))
    until(page, lambda: len(seen) >= 8, lambda: f"the app to answer eight requests; it answered {seen}")
    statuses = {(r.request.method, r.url.removeprefix(app).split("?")[0]): r.status for r in seen}
    assert statuses == {
        ("GET", f"/api/vectors/{a}/export"): 403,
        ("GET", "/api/runs/1/export"): 403,  # no Referer, no Origin: Sec-Fetch-Site says cross-site
        ("POST", "/compare/downstream"): 403,
        ("GET", "/compare/downstream"): 405,
        ("POST", "/api/generations"): 403,
        ("POST", "/runs/preview"): 403,
        ("POST", f"/vectors/{a}/dashboard"): 403,  # reading a vector is a job
        ("POST", "/api/concepts"): 403,  # so is making a concept
    }, statuses
    assert worker_asked == []


def test_an_app_page_opened_from_another_site_computes_nothing_by_itself(
    page: Page, live: LiveServer, other_site: OtherSite, two_vectors: tuple[int, int], worker_asked: list[str]
) -> None:
    page.set_default_timeout(TIMEOUT)
    a, b = two_vectors
    compare = f"{live.url}/compare?ids={a},{b}&prompt=never+asked+before"
    other_site.pages["/go.html"] = f'<!doctype html><script>location = "{compare}"</script>'
    page.goto(other_site.url("/go.html"))
    page.wait_for_url(compare)
    expect(page.locator("button.generate-cell")).to_have_count(3)  # unsteered + two vectors
    expect(page.locator("#compute-downstream")).to_be_visible()
    assert worker_asked == []
    # The user's own click is a request of the app's page: it computes.
    page.click("#compute-downstream")
    expect(page.locator("table.heatmap")).to_have_count(2)
    page.locator("button.generate-cell").first.click()
    expect(page.locator(".compare-cell .generation")).to_have_count(1)
    assert "Downstream" in worker_asked and "Generate" in worker_asked
    # Opened directly (an address typed in, a link of the app's own), the same page fills itself.
    page.goto(compare.replace("never+asked+before", "asked+by+our+page"))
    expect(page.locator(".compare-cell .generation")).to_have_count(3)
