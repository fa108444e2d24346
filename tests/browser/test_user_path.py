"""A new user's whole path through the pages, in a real browser."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from app.models import Generation
from tests.browser.conftest import TIMEOUT_MS, LiveServer, finished

TIMEOUT = TIMEOUT_MS


def jobs_count(api: httpx.Client) -> int:
    return len(api.get("/api/jobs", params={"limit": 500}).json())


def test_new_user_path(page: Page, live: LiveServer, api: httpx.Client, shots: Path) -> None:
    page.set_default_timeout(TIMEOUT)
    page.goto(f"{live.url}/runs/new")
    page.fill("#prompts", "Tell me a story.\nWhat is two plus two?")
    page.fill("#n_vectors", "3")
    page.fill("#steps", "10")
    page.screenshot(path=shots / "01-new-run.png", full_page=True)
    page.click("#start-run")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    expect(page.locator("#job-progress")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("[data-fact=R]")).to_contain_text("× residual norm")
    expect(page.locator("article.card")).to_have_count(3)
    page.wait_for_selector("canvas#vector-map[data-ready]")
    page.screenshot(path=shots / "02-run-gallery.png", full_page=True)
    run_url = page.url

    page.locator("a.vector-link").first.click()
    page.wait_for_url(re.compile(r"/vectors/\d+$"))
    # The page's own scales job may be decoding now: a quick generation goes on beside it.
    page.fill("#custom-form input[name=scale]", "2")
    page.click("#custom-generate")
    expect(page.locator("#custom-steered")).to_be_visible()
    expect(page.locator("#custom-result")).to_contain_text("steered × 2.0")
    page.screenshot(path=shots / "03-vector.png", full_page=True)

    page.fill("#chain-form input[name=n_vectors]", "3")
    page.fill("#chain-form input[name=steps]", "5")
    page.click("#start-chain")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    expect(page.locator("#job-progress")).to_have_attribute("data-status", "succeeded")
    page.wait_for_selector("canvas#chain-plot[data-ready]")
    expect(page.locator("article.card").first).to_be_visible()  # a chain may stop before its length
    page.screenshot(path=shots / "04-chain.png", full_page=True)

    page.goto(run_url)
    # The run's scoring may still be going, and the page swaps its cards when it ends. Ticking
    # across that swap has its own test (test_run_page_scoring.py); this one ticks after it.
    expect(page.locator("#run-body[data-live]")).to_have_count(0)
    boxes = page.locator("article.card input[name=pick]")
    boxes.nth(0).check()
    boxes.nth(1).check()
    page.click("#compare-selected")
    page.wait_for_url(re.compile(r"/compare\?"))
    expect(page.locator(".compare-cell .generation")).to_have_count(3)
    expect(page.locator("table.heatmap")).to_have_count(2)
    page.screenshot(path=shots / "05-compare.png", full_page=True)


def test_bad_form_values_show_errors_and_queue_nothing(
    page: Page, live: LiveServer, api: httpx.Client, shots: Path
) -> None:
    page.set_default_timeout(TIMEOUT)
    before = jobs_count(api)
    page.goto(f"{live.url}/runs/new")
    page.fill("#prompts", "Tell me a story.")
    page.fill("#source", "99")
    page.click("#start-run")
    expect(page.locator("#error-source")).to_contain_text("source block 99 is out of range")
    page.fill("#source", "")
    page.fill("#radius", "-1")
    page.click("#start-run")
    expect(page.locator("#error-radius")).to_contain_text("R (radius) must be a finite number > 0")
    page.screenshot(path=shots / "06-form-errors.png", full_page=True)
    assert jobs_count(api) == before


def test_generated_html_is_shown_as_text(
    page: Page, live: LiveServer, api: httpx.Client, shots: Path
) -> None:
    page.set_default_timeout(TIMEOUT)
    r = api.post("/api/runs", json={"prompts": ["Say hi."], "n_vectors": 1, "method": "random"})
    run_id = r.json()["run_id"]
    evil = '<img src=x onerror="document.title=\'owned\'"><script>document.title="owned"</script>'
    page.goto(f"{live.url}/runs/{run_id}")
    expect(page.locator("article.card")).to_have_count(1)
    # The card shows once the vector is stored; its gallery sample comes after (a busy worker can
    # leave a gap): the job's end says both are stored.
    finished(api, r.json()["job"]["id"])
    steered_ids = [g["id"] for g in api.get("/api/generations", params={"run_id": run_id}).json()]
    assert steered_ids, "the run's gallery stored no sample"
    with live.app.state.service.db.session() as session:
        generation = session.get(Generation, steered_ids[0])
        assert generation is not None
        generation.text = evil  # as if the model had written it
    page.reload()
    steered = page.locator("article.card .steered .text").first
    expect(steered).to_have_text(evil)
    assert page.locator("article.card img").count() == 0
    assert page.title() != "owned"
    page.screenshot(path=shots / "07-escaped.png", full_page=True)
