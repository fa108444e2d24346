"""Understanding a vector in a real browser: a concept made from its page, used as a detector and to
steer a chat; a vector page's dashboard read by a click, shown, tried unsteered, and its tokens on
the gallery's card."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, expect
from safetensors.numpy import save

from app.main import create_app
from tests.app.conftest import make_settings, wait_for
from tests.browser.conftest import TIMEOUT_MS, TIMEOUT_S, finished
from tests.live import LiveServer, free_port

WITH = ["Tell me about zebra stripes.", "Why do zebra herds run?", "Draw a zebra for me."]
WITHOUT = ["Tell me about the sea.", "Why do rivers run?", "Draw a house for me."]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    """A live server whose corpus is small (8 bank prompts, 4 answer tokens), so a reading is quick."""
    data = tmp_path_factory.mktemp("concepts-browser") / "data"
    settings = make_settings(data, tiny_dir, gallery_tokens=8, corpus_bank=8, corpus_tokens=4)
    with LiveServer(create_app(settings), free_port()) as server:
        yield server


def run_done(api: httpx.Client, run_id: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run: dict[str, Any] = api.get(f"/api/runs/{run_id}").json()
        return run if run["status"] in ("succeeded", "failed", "cancelled") else None

    run: dict[str, Any] = wait_for(done, TIMEOUT_S, f"run {run_id} to finish")
    assert run["status"] == "succeeded", run
    return run


def test_a_concept_made_on_its_page_detects_and_steers_a_chat(
    page: Page, live: LiveServer, api: httpx.Client, shots: Path
) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{live.url}/concepts")
    expect(page.locator("#new-concept")).to_be_visible()
    page.fill("#new-concept input[name=name]", "zebras <b>")
    page.fill("#new-concept textarea[name=positive]", "\n".join(WITH))
    page.fill("#new-concept textarea[name=negative]", "\n".join(WITHOUT))
    page.fill("#new-concept input[name=block]", "1")
    page.click("#make-concept")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    run_id = int(page.url.rsplit("/", 1)[1])
    run = run_done(api, run_id)
    assert run["kind"] == "concept" and run["source"] == 1
    page.reload()
    expect(page.locator("#concept h2")).to_contain_text("zebras <b>")  # the name is text, not markup
    expect(page.locator("#concept-vector")).to_be_visible()

    # As a detector: each prompt's score, and whether the concept is present.
    page.fill("#detect-form textarea[name=prompts]", f"{WITH[0]}\nSomething else entirely.")
    page.click("#detect-concept")
    expect(page.locator("#detect-result tr")).to_have_count(3)  # a header and two prompts
    expect(page.locator("#detect-result")).to_contain_text(WITH[0])
    page.screenshot(path=shots / "40-concept.png", full_page=True)

    # Steering a chat, like any stored vector.
    vector = api.get(f"/api/runs/{run_id}/vectors").json()[0]["id"]
    page.click("#chat-with-concept")
    page.wait_for_url(re.compile(r"/chat/\d+$"))
    expect(page.locator(f".term[data-vector='{vector}']")).to_have_count(1)
    page.fill("#message", "Tell me about the sea.")
    page.click("#send")
    reply = "#pane-steered .message.assistant:not(.superseded) .hint"
    expect(page.locator(reply)).to_have_count(1, timeout=TIMEOUT_MS)
    expect(page.locator(reply)).to_contain_text("×")  # a stored steered reply says its scale
    page.screenshot(path=shots / "42-chat-with-concept.png", full_page=True)


def test_a_vector_pages_dashboard(page: Page, live: LiveServer, api: httpx.Client, shots: Path) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    made = api.post(
        "/api/concepts", json={"positive": WITH, "negative": WITHOUT, "block": 1, "name": "stripes"}
    )
    assert made.status_code == 201, made.text
    finished(api, made.json()["job"]["id"])
    values = np.random.default_rng(11).standard_normal((1, 64)).astype(np.float32)
    r = api.post(
        "/api/imports", files={"file": ("v.safetensors", save({"vectors": values}))}, data={"block": "1"}
    )
    assert r.status_code == 201, r.text
    for job in r.json()["sample_jobs"]:
        finished(api, job)
    vector, run = r.json()["vector_ids"][0], r.json()["run_id"]

    page.goto(f"{live.url}/vectors/{vector}")
    expect(page.locator("#dashboard-empty")).to_be_visible()
    expect(page.locator("#dash-concepts")).to_contain_text("stripes")  # cosines need no reading
    page.click("#start-dashboard")
    expect(page.locator("#dashboard[data-live]")).to_have_count(1)  # it follows the reading
    expect(page.locator("#dash-contexts li").first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#dashboard[data-live]")).to_have_count(0)  # done: it stops asking
    stored = api.get(f"/api/vectors/{vector}/dashboard").json()
    expect(page.locator("#dash-contexts li")).to_have_count(len(stored["contexts"]))
    expect(page.locator("#dash-effect .token.up")).to_have_count(20)
    expect(page.locator("#dash-direct .token.up")).to_have_count(20)
    expect(page.locator("#dash-histogram .bar")).to_have_count(40)
    # Trigger hunting: a prompt that comes close, tried unsteered with one click.
    first = stored["prompts"][0]["prompt"]
    expect(page.locator("#dash-prompts li").first).to_contain_text(first)
    page.locator("#dash-prompts .try-unsteered button").first.click()
    expect(page.locator("#dash-prompts .tried .generation").first).not_to_be_empty()
    # Trigger hunting by answers: the prompts the model already answers this way, each with its own.
    alike = stored["alike"]
    assert alike["changed"] > 0 and alike["prompts"], alike
    expect(page.locator("#dash-alike > li")).to_have_count(len(alike["prompts"]))
    expect(page.locator("#dash-alike > li").first).to_contain_text(alike["prompts"][0]["prompt"])
    expect(page.locator("#dash-alike .own-answer").first).to_be_visible()
    page.screenshot(path=shots / "41-vector-dashboard.png", full_page=True)

    # Its top promoted tokens are chips on its gallery card.
    page.goto(f"{live.url}/runs/{run}")
    chips = page.locator(f"#card-{vector} .promoted .token")
    expect(chips).to_have_count(5)
    expect(chips.first).to_have_text(stored["tokens"]["effect"]["promoted"][0]["text"])
    # The gallery shows each vector's cosine with a chosen concept, and filters by it.
    concept_vector = api.get(f"/api/runs/{made.json()['run_id']}/vectors").json()[0]["id"]
    page.select_option("#gallery-concept", str(concept_vector))
    expect(page.locator(f"#card-{vector} .concept-cosine")).to_contain_text("concept cosine")
    page.fill("#gallery input[name=min_cosine]", "2")
    page.locator("#gallery input[name=min_cosine]").dispatch_event("change")
    expect(page.locator("article.card")).to_have_count(0)
    assert "min_cosine=2" in page.url
