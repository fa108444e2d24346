"""A newcomer on a fresh database: the home page's first-run path ends in a gallery."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import TIMEOUT_MS, LiveServer


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
