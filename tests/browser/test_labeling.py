"""Labeling from the keyboard, facets, full-text search and the labels CSV, in a real browser."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from app.models import Generation
from tests.browser.conftest import TIMEOUT_MS, LiveServer, finished

TIMEOUT = TIMEOUT_MS


def facet_count(page: Page, label: str) -> str:
    return page.locator(f".facet[data-label='{label}'] .facet-count").text_content() or ""


def test_label_five_vectors_with_the_keyboard(
    page: Page, live: LiveServer, api: httpx.Client, shots: Path
) -> None:
    page.set_default_timeout(TIMEOUT)
    r = api.post(
        "/api/runs",
        json={"prompts": ["Describe the moon."], "n_vectors": 6, "method": "random", "radius": 6.0},
    )
    run_id, job = r.json()["run_id"], r.json()["job"]["id"]
    finished(api, job)
    page.goto(f"{live.url}/runs/{run_id}")
    expect(page.locator(".facet[data-label='refusal'] .facet-count")).to_have_text("0")

    page.click("#label-these")
    page.fill("#author-name", "ada")
    page.click("#save-author")
    expect(page.locator("#queue-progress")).to_have_text("0 / 6 labeled")
    for i in range(5):  # refusal (3) on all five, code (5) on the odd ones, then Enter to move on
        expect(page.locator("#queue")).to_have_attribute("data-at", str(i))
        expect(page.locator("#queue")).to_have_attribute("data-ready", "true")  # its keys are listened to
        page.keyboard.press("3")
        expect(page.locator(".label-toggle[data-key='3']")).to_have_class(re.compile(r"\bon\b"))
        if i % 2:
            page.keyboard.press("5")
            expect(page.locator(".label-toggle[data-key='5']")).to_have_class(re.compile(r"\bon\b"))
        page.keyboard.press("2")  # a slip ...
        expect(page.locator(".label-toggle[data-key='2']")).to_have_class(re.compile(r"\bon\b"))
        page.keyboard.press("u")  # ... undone
        expect(page.locator(".label-toggle[data-key='2']")).not_to_have_class(re.compile(r"\bon\b"))
        if i == 4:
            page.keyboard.press("n")
            page.keyboard.type("looks like a refusal")
        page.keyboard.press("Enter")
    expect(page.locator("#queue")).to_have_attribute("data-at", "5")
    expect(page.locator("#queue")).to_have_attribute("data-ready", "true")
    expect(page.locator("#queue-progress")).to_have_text("5 / 6 labeled")
    page.keyboard.press("k")
    expect(page.locator("#queue")).to_have_attribute("data-at", "4")
    expect(page.locator(".note")).to_contain_text("looks like a refusal")
    page.screenshot(path=shots / "10-label-queue.png", full_page=True)

    page.goto(f"{live.url}/runs/{run_id}")
    expect(page.locator(".facet[data-label='refusal'] .facet-count")).to_have_text("5")
    expect(page.locator(".facet[data-label='code'] .facet-count")).to_have_text("2")
    expect(page.locator(".facet[data-label='rephrase'] .facet-count")).to_have_text("0")
    page.locator(".facet[data-label='code']").click()
    expect(page.locator("article.card")).to_have_count(2)
    page.screenshot(path=shots / "11-facets.png", full_page=True)

    # Full-text search finds the one completion with a word in it.
    generations = api.get("/api/generations", params={"run_id": run_id}).json()
    with live.app.state.service.db.session() as session:
        target = session.get(Generation, generations[3]["id"])
        assert target is not None
        target.text = "the quixotic walrus sings"
        vector_id = target.vector_id
    page.goto(f"{live.url}/runs/{run_id}")
    expect(page.locator("article.card")).to_have_count(6)  # the gallery is in: typing now is not lost
    page.fill("#gallery-search", "quixotic")
    page.locator("#gallery-search").press("Enter")
    expect(page.locator("article.card")).to_have_count(1)
    expect(page.locator("article.card a.vector-link")).to_have_text(f"vector #{vector_id}")

    with page.expect_download() as download:
        page.click("#export-labels")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert sorted(r["label"] for r in rows) == ["code"] * 2 + ["refusal"] * 5
    assert {r["author"] for r in rows} == {"ada"} and all(r["vector_id"] for r in rows)
