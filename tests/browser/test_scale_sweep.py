"""A scale sweep from a vector page: the form queues it, the section follows it and then plots
effect, fluency and next-token KL against scale with its markers; the sweep's page links back."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import TIMEOUT_MS, LiveServer, finished

SCALES = [0.0, 0.5, 2.0, 8.0]
LABELS = ["effect (distance from unsteered)", "fluency (log-prob per token)", "next-token KL"]


def test_a_scale_sweep_plot(page: Page, live: LiveServer, api: httpx.Client, shots: Path) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    r = api.post(
        "/api/runs", json={"prompts": ["Name a colour.", "Tell me a story."], "n_vectors": 1, "steps": 5}
    )
    finished(api, r.json()["job"]["id"])
    vector = api.get(f"/api/runs/{r.json()['run_id']}/vectors").json()[0]

    page.goto(f"{live.url}/vectors/{vector['id']}")
    expect(page.locator("#scale-sweep .empty")).to_contain_text("No scale sweep")
    page.fill("#scale-sweep-form input[name=scales]", "8, 0.5, 0, 2")
    page.click("#start-scale-sweep")
    sweep_link = page.locator("#scale-sweep ul.sweeps a")
    expect(sweep_link).to_have_count(1)
    run_id = int(sweep_link.get_attribute("href").rsplit("/", 1)[1])  # type: ignore[union-attr]
    finished(api, _job_of(api, run_id))
    sweep = api.get(f"/api/runs/{run_id}/scale-sweep").json()

    # The section stops following the job by itself and draws the sweep.
    plot = page.locator("canvas#scale-sweep-plot[data-ready]")
    expect(plot).to_have_count(1)
    expect(page.locator("#scale-sweep")).not_to_have_attribute("data-live", "")
    drawn = page.evaluate(
        """() => { const c = Chart.getChart(document.getElementById('scale-sweep-plot'));
                   return { labels: c.data.datasets.map(d => d.label),
                            xs: c.data.datasets.map(d => d.data.map(p => p.x)),
                            kl: c.data.datasets[2].data.map(p => p.y),
                            plugins: c.config.plugins.map(p => p.id) }; }"""
    )
    assert drawn["labels"] == LABELS
    assert drawn["xs"] == [SCALES] * 3
    assert drawn["kl"] == [p["kl"] for p in sweep["points"]]
    assert "markers" in drawn["plugins"]
    named = [
        name
        for name, at in (("first change", sweep["first_change"]), ("breaks", sweep["breaks"]))
        if at is not None
    ]
    expect(plot).to_have_attribute("data-markers", ",".join(named))
    markers = page.locator("#scale-sweep-markers")
    for name in named:
        expect(markers.locator(f"[data-marker='{name}']")).to_contain_text("×")
    page.screenshot(path=shots / "26-scale-sweep.png", full_page=True)

    # The sweep's own page: the same plot, its figures and completions, and the way back.
    sweep_link.click()
    page.wait_for_url(f"{live.url}/runs/{run_id}")
    expect(page.locator("h1")).to_contain_text("Scale sweep")
    expect(page.locator("canvas#scale-sweep-plot[data-ready]")).to_have_count(1)
    expect(page.locator("table.scale-points tr[data-scale]")).to_have_count(len(SCALES))
    expect(page.locator("[data-fact='first change']")).not_to_be_empty()
    page.screenshot(path=shots / "27-scale-sweep-run.png", full_page=True)
    page.click("#parent-vector")
    page.wait_for_url(re.compile(rf"/vectors/{vector['id']}$"))


def _job_of(api: httpx.Client, run_id: int) -> int:
    jobs = api.get("/api/jobs", params={"limit": 50}).json()
    return int(next(j["id"] for j in jobs if j["run_id"] == run_id))
