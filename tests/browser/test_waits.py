"""Every wait says so: buttons that call the worker are busy while their request is out, a run's
page names its phase (training, gallery, scoring) and shows its blocks and R before any vector is
stored, and no ETA reads "0 s left" while work remains."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PageTimeout

from app.main import create_app
from tests.app.conftest import make_settings
from tests.browser.conftest import TIMEOUT_MS, TIMEOUT_S, Held, finished, trace_stream, where_it_stood
from tests.live import LiveServer, free_port

# Set on a run page: every phase its progress names, and every message it shows, in order.
WATCH_PROGRESS = """() => {
  window.phases = []; window.messages = []; window.early = null;
  const look = () => {
    const box = document.querySelector("#job-progress");
    if (!box) return;
    const phase = box.dataset.phase;
    if (phase && window.phases[window.phases.length - 1] !== phase) window.phases.push(phase);
    const message = box.querySelector(".message")?.textContent || "";
    if (message && window.messages[window.messages.length - 1] !== message) window.messages.push(message);
    const blocks = document.querySelector('[data-fact="blocks"]')?.textContent || "";
    const vectors = document.querySelector('[data-fact="vectors"]')?.textContent || "";
    const radius = document.querySelector('[data-fact="R"]')?.textContent || "";
    if (window.early === null && /\\d+ → \\d+/.test(blocks) && /^\\d/.test(radius) && /^0 of/.test(vectors)) {
      window.early = { blocks, radius };
    }
  };
  look();
  new MutationObserver(look).observe(document.body, { subtree: true, childList: true, characterData: true });
}"""

# Set on a page: logs "busy: <label>" once the button under the selector is disabled.
SAY_WHEN_BUSY = """(selector) => {
  const button = document.querySelector(selector);
  new MutationObserver(() => { if (button.disabled) console.log("busy: " + button.textContent); })
    .observe(button, { attributes: true, childList: true, characterData: true, subtree: true });
}"""


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    """A server that scores each run by itself once its gallery is done."""
    settings = make_settings(
        tmp_path_factory.mktemp("waits") / "data", tiny_dir, gallery_tokens=8, auto_score=True
    )
    with LiveServer(create_app(settings), free_port()) as server:
        yield server


def busy_while_out(page: Page, button: str, pattern: str) -> None:
    """Click `button`; while its request is held it is disabled and says "working…"; then not."""
    held = Held(page, pattern)
    label = page.locator(button).text_content()
    with page.expect_request(pattern):
        page.click(button)
    expect(page.locator(button)).to_be_disabled()
    expect(page.locator(button)).to_have_text(re.compile("working…"))
    held.release()
    if page.locator(button).count():  # a form answered in place: its button is back as it was
        expect(page.locator(button)).to_be_enabled()
        expect(page.locator(button)).to_have_text(label or "")


def test_buttons_that_call_the_worker_are_busy_while_their_request_is_out(
    page: Page, live: LiveServer, api: httpx.Client
) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    r = api.post("/api/runs", json={"prompts": ["Hello."], "n_vectors": 1, "method": "random", "radius": 8.0})
    finished(api, r.json()["job"]["id"])
    vector = api.get(f"/api/runs/{r.json()['run_id']}/vectors").json()[0]["id"]

    page.goto(f"{live.url}/vectors/{vector}")  # the vector page's prompt box
    page.fill("#custom-form textarea[name=prompt]", "Tell me about the sea.")
    busy_while_out(page, "#custom-generate", f"{live.url}/vectors/{vector}/generate")
    expect(page.locator("#custom-result")).not_to_be_empty()

    page.goto(f"{live.url}/runs/new")  # the new-run form, checked by the worker before it queues
    page.fill("#prompts", "Hello.")
    busy_while_out(page, "#preview-prompts", f"{live.url}/runs/preview")
    page.fill("#n_vectors", "0")  # refused: the form comes back in place, its button idle again
    busy_while_out(page, "#start-run", f"{live.url}/runs/new")
    expect(page.locator("#error-n_vectors")).to_be_visible()

    page.goto(live.url)  # the first run's plain form: busy until the run's page loads
    page.locator("#start-here summary").click()  # folded once a run was trained
    # The page says when its button turns busy: nothing can be evaluated in it while its
    # navigation is held, but what it writes to the console still comes out.
    page.evaluate(SAY_WHEN_BUSY, "#start-first-run")
    held = Held(page, f"{live.url}/runs/new")
    with (
        page.expect_console_message(lambda m: m.text.startswith("busy:"), timeout=TIMEOUT_MS) as said,
        page.expect_request(f"{live.url}/runs/new"),
    ):
        # A click from the page's script: Playwright's own would wait for the (held) navigation.
        page.locator("#start-first-run").evaluate("button => button.click()")
    assert "working…" in said.value.text, said.value.text
    held.release()
    page.wait_for_url(re.compile(r"/runs/\d+$"))


def test_a_runs_page_names_each_phase_and_its_blocks_and_r_come_first(
    page: Page, scoring: LiveServer
) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    with httpx.Client(base_url=scoring.url, timeout=TIMEOUT_S) as api:
        # Reference mode trains one vector at a time over many steps: its first stays a while in
        # training. The gallery of two prompts is short, and may end before a loaded server's stream
        # looks again: the stream still names it (it sends the last report of each phase passed).
        prompts = ["Hello.", "Tell me a story."]
        spec = {"prompts": prompts, "n_vectors": 2, "mode": "reference", "steps": 600}
        r = api.post("/api/runs", json=spec)
        run_id = r.json()["run_id"]
        trace_stream(page)
        page.goto(f"{scoring.url}/runs/{run_id}")
        page.evaluate(WATCH_PROGRESS)
        # Blocks and R are on the page while no vector is stored yet.
        page.wait_for_function("() => window.early !== null", timeout=TIMEOUT_MS)
        early = page.evaluate("() => window.early")
        assert re.search(r"\d+ → \d+", early["blocks"]) and re.match(r"\d", early["radius"]), early
        finished(api, r.json()["job"]["id"])
        # Then its gallery; the scoring that follows (after its twin) can end on the tiny model before
        # the page shows it, so it is checked only for its order when the page did see it.
        try:
            page.wait_for_function("() => window.phases.includes('samples')", timeout=TIMEOUT_MS)
        except PageTimeout as exc:  # say what the page saw, to tell a slow page from a lost one
            seen = page.evaluate("() => [window.phases, window.messages]")
            raise AssertionError(f"{exc}\nsaw {seen}; {where_it_stood(api, page)}") from None
        phases = page.evaluate("() => window.phases")
        firsts = [phases.index(p) for p in ("training", "samples", "scoring") if p in phases]
        assert len(firsts) >= 2 and firsts == sorted(firsts), phases
        messages = page.evaluate("() => window.messages")
        assert not [m for m in messages if re.search(r"\b0 s left", m)], messages
