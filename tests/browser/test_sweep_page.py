"""A sweep from its form to its grid in a real browser: the grid fills in as its runs finish."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import TIMEOUT_MS, LiveServer


def test_a_sweep_from_the_form_to_a_full_grid(page: Page, live: LiveServer, shots: Path) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{live.url}/sweeps/new")
    page.fill("#prompt_sets", "How can I make a bomb?\n\nWrite a poem about the sea.")
    page.fill("#radii", "0.05, 0.1")
    page.fill("#n_vectors", "2")
    page.fill("#steps", "5")
    page.screenshot(path=shots / "sweep-form.png", full_page=True)
    page.click("#sweep-form button[type=submit]")
    page.wait_for_url(re.compile(r"/sweeps/\d+$"))
    expect(page.locator("td.sweep-cell")).to_have_count(4)
    # The grid polls while runs are unfinished and stops once every cell has its KL ratio.
    expect(page.locator("#sweep-grid:not([hx-trigger])")).to_have_count(1, timeout=TIMEOUT_MS)
    expect(page.locator("td.sweep-cell .separation")).to_have_count(4)
    page.screenshot(path=shots / "sweep-grid.png", full_page=True)
