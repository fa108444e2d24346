"""A run page left open follows its run to the end: training, its random twin, then the scoring
that the pair's end queues; the scores appear in place, without reloading the page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from app.main import create_app
from tests.app.conftest import make_settings
from tests.browser.conftest import TIMEOUT_MS, TIMEOUT_S, trace_stream, where_it_stood
from tests.live import LiveServer, free_port


@pytest.fixture(scope="module")
def scoring_server(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    """A server that scores each learned run by itself once it and its twin end, as a user's does."""
    data = tmp_path_factory.mktemp("scoring") / "data"
    settings = make_settings(data, tiny_dir, gallery_tokens=8, auto_score=True)
    with LiveServer(create_app(settings), free_port()) as server:
        yield server


def follow_to_the_scores(page: Page, server: LiveServer, shots: Path, shot: str) -> None:
    """Open a run's page while its run waits in the queue, let it run, and see its scores appear."""
    page.set_default_timeout(TIMEOUT_MS)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as api:
        # A long job holds the worker, so the page is opened while its run still waits in the queue.
        blocker = api.post(
            "/api/runs", json={"prompts": ["Hi"], "n_vectors": 1, "mode": "reference", "steps": 5000}
        )
        assert blocker.status_code == 201, blocker.text
        body = {"prompts": ["Tell me a story.", "Name a colour."], "n_vectors": 3, "steps": 3, "twin": True}
        ours = api.post("/api/runs", json=body)
        assert ours.status_code == 201, ours.text
        run_id = ours.json()["run_id"]
        trace_stream(page)
        page.goto(f"{server.url}/runs/{run_id}")
        expect(page.locator("#run-body[data-live]")).to_have_count(1)
        expect(page.locator("#discovery-section")).to_have_count(0)
        page.evaluate("window.steerscopeSamePage = true")  # gone if the page is loaded again
        assert api.post(f"/api/jobs/{blocker.json()['job']['id']}/cancel").status_code == 200

        try:
            expect(page.locator("#discovery-section")).to_be_visible()
        except AssertionError as exc:  # say where each job stood, to tell a slow page from a lost one
            raise AssertionError(
                f"{exc}\nat {datetime.now(UTC).isoformat()}, {where_it_stood(api, page)}"
            ) from None
        expect(page.locator("#scoring")).to_contain_text("Scored")
        expect(page.locator("#run-body[data-live]")).to_have_count(0)
        assert page.evaluate("window.steerscopeSamePage === true"), "the page was loaded again"
        page.screenshot(path=shots / shot, full_page=True)


def test_the_scores_appear_when_the_scoring_ends_without_a_reload(
    page: Page, scoring_server: LiveServer, shots: Path
) -> None:
    follow_to_the_scores(page, scoring_server, shots, "31-run-scored-in-place.png")


def test_a_page_whose_refresh_fails_tries_again(page: Page, scoring_server: LiveServer, shots: Path) -> None:
    """A job ends while the server cannot answer the page (busy, restarting): the page fetches
    itself again a moment later rather than stay as it was, following nothing."""
    refused: list[str] = []

    def refuse_the_first(route: Route) -> None:
        if route.request.headers.get("hx-request") and not refused:
            refused.append(route.request.url)
            route.fulfill(status=503, body="busy")
        else:
            route.continue_()

    page.route(re.compile(r"/runs/\d+(\?.*)?$"), refuse_the_first)
    follow_to_the_scores(page, scoring_server, shots, "31-run-scored-after-a-refused-refresh.png")
    assert refused, "no refresh of the page was refused: the test did not test a retry"


def test_a_box_ticked_while_the_page_fetches_itself_stays_ticked(
    page: Page, scoring_server: LiveServer, shots: Path
) -> None:
    """The scoring ends and the page asks for its fresh copy; a vector ticked while that copy is on
    its way stays ticked in it, and the address and the compare link agree."""
    ticked: list[str] = []

    def tick_while_in_flight(route: Route) -> None:
        if not route.request.headers.get("hx-request") or ticked:
            route.continue_()
            return
        answer = route.fetch()  # drawn from the address as it was: nothing ticked
        opening = re.search(r'<div id="run-body"[^>]*>', answer.text())
        boxes = page.locator("article.card input[name=pick]")
        # Only the last copy counts: a later one would draw the tick from the address again.
        if opening and "data-live" not in opening.group(0) and boxes.count():
            ticked.append(boxes.first.get_attribute("value") or "")
            boxes.first.check()
        route.fulfill(response=answer)

    page.route(re.compile(r"/runs/\d+(\?.*)?$"), tick_while_in_flight)
    follow_to_the_scores(page, scoring_server, shots, "31-run-ticked-while-it-refreshed.png")
    assert ticked, "no box was ticked while the last copy was on its way: the test tested nothing"
    expect(page.locator(f"article.card input[name=pick][value='{ticked[0]}']")).to_be_checked()
    expect(page.locator("#picked")).to_contain_text("1 ticked")
    assert f"pick={ticked[0]}" in page.url
