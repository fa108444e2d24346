"""Refining a vector from its page: the R-path form queues a run and takes the browser to its page,
which follows it live and then plots how the direction turns; a search does the same with a
detector's score per generation."""

from __future__ import annotations

from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import TIMEOUT_MS, LiveServer, finished


def _job_of(api: httpx.Client, run_id: int) -> int:
    jobs = api.get("/api/jobs", params={"limit": 50}).json()
    return int(next(j["id"] for j in jobs if j["run_id"] == run_id))


def test_an_r_path_and_a_search_from_the_vector_page(
    page: Page, live: LiveServer, api: httpx.Client, shots: Path
) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    r = api.post("/api/runs", json={"prompts": ["Name a colour."], "n_vectors": 1, "steps": 5, "radius": 4})
    finished(api, r.json()["job"]["id"])
    vector = api.get(f"/api/runs/{r.json()['run_id']}/vectors").json()[0]
    assert api.post("/api/detectors", json={"name": "letter t", "pattern": "t"}).status_code == 201

    page.goto(f"{live.url}/vectors/{vector['id']}")
    page.fill("#rpath-form input[name=multiples]", "2, 0.5, 1")
    page.fill("#rpath-form input[name=steps]", "4")
    page.screenshot(path=shots / "40-refine-forms.png", full_page=True)
    page.click("#start-rpath")
    page.wait_for_url(f"{live.url}/runs/*")
    run_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("h1")).to_contain_text(f"R-path #{run_id}")
    finished(api, _job_of(api, run_id))
    path = api.get(f"/api/runs/{run_id}/rpath").json()

    # The page fetches itself again when the job ends: the plot, the points and the coordinates.
    expect(page.locator("canvas#rpath-plot[data-ready]")).to_have_count(1)
    expect(page.locator("table.rpath-points tr[data-multiple]")).to_have_count(3)
    expect(page.locator("table.rpath-coordinates tr[data-coordinate]")).to_have_count(8)
    drawn = page.evaluate(
        """() => { const points = Chart.getChart(document.getElementById('rpath-plot')).data.datasets[0].data;
                   return { xs: points.map(p => p.x), cos: points.map(p => p.y) }; }"""
    )
    assert drawn["xs"] == [0.5, 1.0, 2.0]
    assert drawn["cos"] == [p["cos_parent"] for p in path["points"]]
    page.screenshot(path=shots / "41-rpath-run.png", full_page=True)

    # Back on the vector page, a search around it with the detector.
    page.click("#parent-vector")
    page.wait_for_url(f"{live.url}/vectors/{vector['id']}")
    expect(page.locator(f"#refinements a[href='/runs/{run_id}']")).to_have_count(1)
    page.locator("#search-form").evaluate("form => form.closest('details').open = true")
    page.fill("#search-form input[name=budget]", "4")
    page.fill("#search-form input[name=population]", "2")
    page.click("#start-search")
    page.wait_for_url(f"{live.url}/runs/*")
    search_id = int(page.url.rsplit("/", 1)[1])
    finished(api, _job_of(api, search_id))
    expect(page.locator("canvas#search-plot[data-ready]")).to_have_count(1)
    expect(page.locator("table.search-generations tr[data-generation]")).to_have_count(3)
    expect(page.locator("#search-scores")).to_contain_text("after 4 perturbed vectors")
    page.screenshot(path=shots / "42-search-run.png", full_page=True)

    # A refused request says why next to the forms and queues nothing.
    page.goto(f"{live.url}/vectors/{vector['id']}")
    page.fill("#rpath-form input[name=multiples]", "1, zero")
    page.click("#start-rpath")
    expect(page.locator("#refine-error .error")).to_contain_text("'zero' is not a number")
