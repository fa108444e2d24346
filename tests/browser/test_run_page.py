"""A run's page in a real browser: it keeps its view while it sits still, updates itself when its job
ends, links its plots to its cards; and the new-run form's two helper buttons."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, Request, Route, expect

from tests.browser.conftest import TIMEOUT_MS, LiveServer, finished

STILL_MS = 10_000  # how long a finished page must keep still: the point of the test, not a wait


def start(api: httpx.Client, **body: Any) -> tuple[int, int]:
    r = api.post("/api/runs", json={"prompts": ["Describe the moon."], **body})
    assert r.status_code == 201, r.text
    return r.json()["run_id"], r.json()["job"]["id"]


def streams(requests: list[str]) -> list[str]:
    return [u for u in requests if "/live" in u or re.search(r"/api/jobs/\d+/events", u)]


def test_a_finished_run_keeps_its_view(page: Page, live: LiveServer, api: httpx.Client, shots: Path) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    run_id, job = start(api, n_vectors=30, method="random", radius=6.0)
    finished(api, job)
    vectors = api.get(f"/api/runs/{run_id}/vectors").json()
    refusal = next(x["id"] for x in api.get("/api/labels").json() if x["name"] == "refusal")
    for v in vectors[:26]:  # 26 labelled: two pages of them (24 a page)
        r = api.post(
            "/api/labelings",
            json={"label_id": refusal, "vector_id": v["id"], "on": True},
            headers={"Cookie": "steerscope_author=ada"},
        )
        assert r.status_code == 200, r.text

    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{live.url}/runs/{run_id}")
    expect(page.locator("article.card")).to_have_count(24)  # rendered with the page, no second request
    page.select_option("#gallery select[name=sort]", "norm")
    expect(page).to_have_url(re.compile(r"sort=norm"))
    page.check("#gallery input[name=desc]")
    expect(page).to_have_url(re.compile(r"desc=1|desc=true"))
    page.locator(".facet[data-label='refusal']").click()
    expect(page.locator("#gallery .count")).to_have_text("26 vectors")
    page.click("#gallery button.next")
    expect(page.locator(".pager span")).to_have_text("page 2 / 2")
    boxes = page.locator("article.card input[name=pick]")
    expect(boxes).to_have_count(2)
    boxes.nth(0).check()
    boxes.nth(1).check()
    picked = sorted(int(boxes.nth(i).get_attribute("value") or 0) for i in range(2))
    expect(page).to_have_url(re.compile(r"pick=\d+.*pick=\d+"))

    def view_is_kept() -> None:
        expect(page.locator("#gallery select[name=sort]")).to_have_value("norm")
        expect(page.locator("#gallery input[name=desc]")).to_be_checked()
        expect(page.locator(".facet[data-label='refusal'] input")).to_be_checked()
        expect(page.locator(".pager span")).to_have_text("page 2 / 2")
        expect(page.locator("article.card input[name=pick]:checked")).to_have_count(2)

    before = len(requests)
    page.wait_for_timeout(STILL_MS)
    assert requests[before:] == [], f"a finished page asked for more while sitting still: {requests[before:]}"
    view_is_kept()
    assert streams(requests) == [], "a finished run's page opened a stream"
    page.screenshot(path=shots / "12-run-gallery-kept.png", full_page=True)

    page.reload()  # the address holds the whole view
    view_is_kept()

    page.go_back()  # one step back: page 1 of the same filtered view
    expect(page.locator(".pager span")).to_have_text("page 1 / 2")
    expect(page.locator(".facet[data-label='refusal'] input")).to_be_checked()
    page.go_forward()
    view_is_kept()

    page.click("#compare-selected")
    page.wait_for_url(re.compile(r"/compare\?ids="))
    assert page.url.endswith(f"ids={picked[0]},{picked[1]}")
    expect(page.locator(".compare-cell h3 a")).to_have_text([f"vector #{picked[0]}", f"vector #{picked[1]}"])


def test_a_box_ticked_while_a_new_view_loads_stays_ticked(
    page: Page, live: LiveServer, api: httpx.Client
) -> None:
    """A new view of the gallery is drawn from the form as it was sent; a vector ticked while it
    is on its way stays ticked in it, and the address keeps both the view and the tick."""
    page.set_default_timeout(TIMEOUT_MS)
    run_id, job = start(api, n_vectors=4, method="random", radius=6.0)
    finished(api, job)
    ticked: list[str] = []

    def tick_while_in_flight(route: Route) -> None:
        answer = route.fetch()  # drawn from the form as sent: nothing ticked
        boxes = page.locator("article.card input[name=pick]")
        ticked.append(boxes.first.get_attribute("value") or "")
        boxes.first.check()
        route.fulfill(response=answer)

    page.goto(f"{live.url}/runs/{run_id}")
    expect(page.locator("article.card")).to_have_count(4)
    page.route(re.compile(rf"/runs/{run_id}/gallery\?"), tick_while_in_flight)
    page.select_option("#gallery select[name=sort]", "norm")
    expect(page).to_have_url(re.compile(r"sort=norm"))
    assert ticked, "the new view was never asked for: the test tested nothing"
    expect(page.locator(f"article.card input[name=pick][value='{ticked[0]}']")).to_be_checked()
    expect(page.locator("#picked")).to_contain_text("1 ticked")
    expect(page).to_have_url(re.compile(rf"pick={ticked[0]}"))


def test_a_page_opened_mid_run_updates_itself(
    page: Page, live: LiveServer, api: httpx.Client, shots: Path
) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    # Reference mode takes every one of its steps: long enough to open the page while it trains
    # (1,000 steps took 6 s, which a loaded machine's page could miss).
    run_id, job = start(api, n_vectors=1, steps=3000, mode="reference")
    page.goto(f"{live.url}/runs/{run_id}")
    expect(page.locator("#run-body[data-live]")).to_have_count(1)  # opened while the job is live
    # R is said while the vector trains (the worker resolves it first), as "not known yet" before.
    expect(page.locator("[data-fact=R]")).to_contain_text(re.compile(r"× residual norm|not known yet"))
    page.evaluate("() => { window.sameDocument = true; }")
    progress = page.locator("#job-progress")
    expect(progress).to_contain_text(re.compile(r"in training, step \d+/3000 · about \d+ (s|min) left"))
    assert progress.inner_text().count(" left") == 1  # one ETA, the worker's from its measured step time
    expect(progress).not_to_contain_text("eta s")  # no raw figure names beside the message
    page.screenshot(path=shots / "13-run-live.png", full_page=True)

    finished(api, job)
    run = api.get(f"/api/runs/{run_id}").json()
    expect(page.locator("#run-body")).not_to_have_attribute("data-live", "")
    expect(page.locator("#job-progress")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("[data-fact=R]")).to_contain_text(f"{run['radius']:.4g}")
    expect(page.locator("[data-fact=R]")).to_contain_text("× residual norm")
    expect(page.locator("[data-fact=blocks]")).to_have_text(
        re.compile(rf"^{run['source']} → {run['target']}")
    )
    expect(page.locator("[data-fact='steps run']")).to_contain_text("3000 of 3000 per vector")
    expect(page.locator("article.card .sample")).to_have_count(1)
    assert page.evaluate("() => window.sameDocument === true"), "the page was reloaded"
    page.screenshot(path=shots / "14-run-finished.png", full_page=True)


def test_plots_name_their_axes_and_follow_the_hovered_vector(
    page: Page, live: LiveServer, api: httpx.Client, shots: Path
) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    run_id, job = start(api, n_vectors=4, steps=20)
    finished(api, job)
    page.goto(f"{live.url}/runs/{run_id}")
    page.wait_for_selector("canvas#vector-map[data-ready]")
    page.wait_for_function(
        "() => Chart.getChart(document.getElementById('curves')).data.datasets.length === 4"
    )
    legend = page.evaluate(
        "() => Chart.getChart(document.getElementById('curves')).legend.legendItems.map(i => i.text)"
    )
    vectors = api.get(f"/api/runs/{run_id}/vectors").json()
    assert legend == [f"#{v['id']} (index {v['index']})" for v in vectors]
    axes = page.evaluate(
        """() => { const c = Chart.getChart(document.getElementById('vector-map'));
                   return [c.options.scales.x.title.text, c.options.scales.y.title.text,
                           ...c.scales.x.ticks.map(t => t.label), ...c.scales.y.ticks.map(t => t.label)]; }"""
    )
    assert axes[0].startswith("principal component 1") and axes[1].startswith("principal component 2")
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", str(label)) for label in axes[2:]), axes

    # A card, hovered, shows its vector in the map and the curves.
    page.hover("article.card[data-index='2'] .metrics")
    active = page.evaluate(
        """() => { const c = Chart.getChart(document.getElementById('vector-map'));
                   return c.getActiveElements().map(a => c.data.datasets[0].data[a.index].index); }"""
    )
    assert active == [2]
    widths = page.evaluate(
        "() => Chart.getChart(document.getElementById('curves')).data.datasets.map(d => d.borderWidth)"
    )
    assert widths == [1, 1, 3, 1]
    page.screenshot(path=shots / "15-linked-hover.png", full_page=True)

    # A map point, hovered, marks its card.
    page.locator("#vector-map").scroll_into_view_if_needed()
    x, y = page.evaluate(
        """() => { const c = Chart.getChart(document.getElementById('vector-map'));
                   const p = c.getDatasetMeta(0).data[1]; const box = c.canvas.getBoundingClientRect();
                   return [box.left + p.x, box.top + p.y]; }"""
    )
    page.mouse.move(x, y)
    expect(page.locator("article.card.linked")).to_have_attribute("data-index", "1")


def test_calibrate_fills_r_and_the_preview_answers_twice(page: Page, live: LiveServer, shots: Path) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if "htmx:" in m.text or m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{live.url}/runs/new")
    page.fill("#prompts", "Tell me a story.")
    page.click("#preview-prompts")
    expect(page.locator("#preview pre.rendered")).to_contain_text("Tell me a story.")
    page.fill("#prompts", "What is two plus two?")
    page.click("#preview-prompts")
    expect(page.locator("#preview pre.rendered")).to_contain_text("What is two plus two?")
    expect(page.locator("#preview pre.rendered")).not_to_contain_text("Tell me a story.")

    page.click("#calibrate-radius")
    expect(page.locator("#calibrated")).to_be_visible()
    radius = page.locator("#radius").input_value()
    assert float(radius) > 0
    expect(page.locator("#calibration")).not_to_have_attribute("hx-trigger", re.compile("every"))
    page.screenshot(path=shots / "16-calibrated.png", full_page=True)
    assert problems == []

    def started(request: Request) -> bool:
        return request.url.endswith("/runs/new") and request.method == "POST"

    with page.expect_request(started) as submitted:
        page.click("#start-run")
    assert f"radius={radius}" in (submitted.value.post_data or "")
