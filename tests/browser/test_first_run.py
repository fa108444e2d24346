"""A newcomer on a fresh database: the home page's first-run path ends in a gallery."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import TIMEOUT_MS, LiveServer, finished


def test_from_a_fresh_database_to_a_gallery(
    page: Page, live: LiveServer, api: httpx.Client, shots: Path
) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    assert api.get("/api/runs").json() == []  # this module's server starts on an empty database
    page.goto(live.url)
    expect(page.locator("#start-here details")).to_have_attribute("open", "")
    expect(page.locator("#start-here")).to_contain_text("What to expect")
    page.screenshot(path=shots / "00-home-fresh.png", full_page=True)
    page.click("#start-first-run")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    expect(page.locator("#job-progress")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("article.card")).to_have_count(8)
    expect(page.locator("article.card .sample").first).to_be_visible()
    expect(page.locator("[data-fact=blocks]")).to_contain_text("from the model's depth")
    run_url = page.url

    page.goto(live.url)
    expect(page.locator("section.run-group[data-kind=melbo] h2")).to_contain_text("MELBO runs 1")
    expect(page.locator("section.run-group[data-kind=melbo] td.vectors")).to_have_text("8")
    page.screenshot(path=shots / "17-home-after-first-run.png", full_page=True)
    page.click(f"section.run-group a[href='{run_url.removeprefix(live.url)}']")
    expect(page.locator("article.card")).to_have_count(8)


def test_every_page_as_it_looks_now(page: Page, live: LiveServer, api: httpx.Client, shots: Path) -> None:
    """A screenshot of each page a user can reach (kept as artifacts), each checked for its gist."""
    page.set_default_timeout(TIMEOUT_MS)
    r = api.post("/api/runs", json={"prompts": ["Name a fruit."], "n_vectors": 3, "steps": 10})
    finished(api, r.json()["job"]["id"])
    vectors = api.get(f"/api/runs/{r.json()['run_id']}/vectors").json()
    chain = api.post("/api/chains", json={"vector_id": vectors[0]["id"], "n_vectors": 2, "steps": 5})
    finished(api, chain.json()["job"]["id"])
    calibration = api.post("/api/calibrations", json={"prompts": ["Name a fruit."]})
    finished(api, calibration.json()["job"]["id"])

    def shot(path: str, name: str, gist: str) -> None:
        page.goto(f"{live.url}{path}")
        expect(page.locator("main")).to_contain_text(gist)
        page.screenshot(path=shots / name, full_page=True)

    shot("/jobs", "21-jobs.png", "took")
    shot("/runs", "22-runs.png", "chain")
    shot(f"/runs/{calibration.json()['run_id']}", "23-calibration-run.png", "calibrated R")
    shot(f"/runs/{chain.json()['run_id']}", "24-chain.png", "Composition test")
    page.select_option("#compose-n", "2")
    page.click("#composition button[type=submit]")
    page.wait_for_url(re.compile(r"/vectors/\d+$"))
    expect(page.locator("#scales td.pending")).to_have_count(0)
    page.screenshot(path=shots / "25-composed-vector.png", full_page=True)
    shot("/labels", "26-labels.png", "Your name (recorded with every label)")
    shot("/chat", "27-chat-list.png", "Conversations")
    shot(f"/compare?ids={vectors[0]['id']},{vectors[1]['id']}", "28-compare.png", "Cosine of the vectors")
    shot("/no/such/page", "29-not-found.png", "there is no page at /no/such/page")
    expect(page.locator("#way-back a")).to_have_count(5)
