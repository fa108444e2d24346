"""Behaviours in a real browser: the queue's suggestion accepted with one key, the behaviours page,
the gallery grouped by behaviour."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect
from sqlalchemy import select

from app.models import Generation, Vector
from tests.app.conftest import wait_for
from tests.app.helpers import score_run
from tests.browser.conftest import LiveServer

TIMEOUT = 120_000


def test_accept_the_suggested_label_with_one_key(page: Page, live: LiveServer, shots: Path) -> None:
    page.set_default_timeout(TIMEOUT)
    r = httpx.post(
        f"{live.url}/api/runs",
        json={"prompts": ["Describe the sea.", "Name a colour."], "n_vectors": 3, "steps": 3},
        timeout=300,  # the first request waits for the worker to start and load the model
    )
    run_id, job = r.json()["run_id"], r.json()["job"]["id"]
    wait_for(
        lambda: httpx.get(f"{live.url}/api/jobs/{job}", timeout=30).json()["status"] == "succeeded",
        timeout=300,
    )
    service = live.app.state.service
    asked = httpx.post(f"{live.url}/api/runs/{run_id}/score", timeout=120)  # this server scores on request
    assert asked.status_code == 201, asked.text
    score_run(service, run_id)
    with service.db.session() as session:
        first = session.scalars(select(Vector).where(Vector.run_id == run_id).order_by(Vector.rank)).first()
        assert first is not None
        for g in session.scalars(select(Generation).where(Generation.vector_id == first.id)):
            g.flag = "rephrase"  # what the scores would say of a vector that only rewords
        first_id = first.id

    page.goto(f"{live.url}/runs/{run_id}/label")
    page.fill("#author-name", "ada")
    page.click("#save-author")
    expect(page.locator("#queue")).to_have_attribute("data-vector", str(first_id))
    expect(page.locator("#suggestion")).to_contain_text("rephrase")
    rephrase = page.locator(".label-toggle", has_text="rephrase")
    expect(rephrase).not_to_have_class(re.compile(r"\bon\b"))
    expect(page.locator("#queue")).to_have_attribute("data-ready", "true")  # its keys are listened to
    page.keyboard.press("a")
    expect(rephrase).to_have_class(re.compile(r"\bon\b"))
    page.screenshot(path=shots / "20-queue-suggestion.png", full_page=True)
    labels = httpx.get(f"{live.url}/api/export/labels.jsonl", params={"run_id": run_id}, timeout=30).text
    assert '"label": "rephrase"' in labels and f'"vector_id": {first_id}' in labels
    page.keyboard.press("a")  # accepting again keeps it on (it does not toggle off)
    page.keyboard.press("j")
    expect(page.locator("#queue")).to_have_attribute("data-at", "1")

    page.goto(f"{live.url}/runs/{run_id}/behaviours")
    expect(page.locator("tr.behaviour-row").first).to_be_visible()
    page.screenshot(path=shots / "21-behaviours.png", full_page=True)
    page.goto(f"{live.url}/runs/{run_id}")
    expect(page.locator("#discovery")).to_be_visible()
    page.locator("input[name=group]").check()
    expect(page.locator("h3.behaviour-group").first).to_be_visible()
    page.screenshot(path=shots / "22-gallery-by-behaviour.png", full_page=True)
