"""No cross-site writes, in a real browser: a page on another origin that auto-submits a form to the
app is refused, a host name the app does not serve is refused, and the app's own forms still work."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import EVIL_HOST
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
