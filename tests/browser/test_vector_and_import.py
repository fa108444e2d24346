"""A vector page that fills itself, and imported vectors shown as what they are."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import TIMEOUT_MS, LiveServer, finished


def trained(api: httpx.Client, seed: int) -> list[dict[str, object]]:
    r = api.post("/api/runs", json={"prompts": ["Name a colour."], "n_vectors": 2, "steps": 10, "seed": seed})
    finished(api, r.json()["job"]["id"])
    rows: list[dict[str, object]] = api.get(f"/api/runs/{r.json()['run_id']}/vectors").json()
    return rows


def test_the_scales_fill_themselves_and_neighbours_come_from_other_runs(
    page: Page, live: LiveServer, api: httpx.Client, shots: Path
) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    mine, theirs = trained(api, 0), trained(api, 1)
    page.goto(f"{live.url}/vectors/{mine[0]['id']}")
    expect(page.locator("#scales td.pending")).to_have_count(0)  # nobody clicked anything
    expect(page.locator("#scales")).not_to_have_attribute("data-live", "")
    expect(page.locator("#scales td[data-scale='-1.0']").first).not_to_be_empty()
    near = page.locator("table.neighbours td:first-child a")
    expect(near).to_have_count(2)
    assert sorted(near.all_text_contents()) == sorted(f"#{v['id']}" for v in theirs)
    page.screenshot(path=shots / "18-vector-scales.png", full_page=True)


def test_an_import_says_what_it_is_and_a_second_one_is_noticed(
    page: Page, live: LiveServer, api: httpx.Client, shots: Path, tmp_path: Path
) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    vector = trained(api, 2)[0]
    path = tmp_path / "steer.safetensors"
    path.write_bytes(api.get(f"/api/vectors/{vector['id']}/export", params={"format": "safetensors"}).content)

    page.goto(live.url)
    page.set_input_files("#import-form input[name=file]", str(path))
    page.click("#import-form button[type=submit]")
    page.click("#imported-run")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    run_url = page.url
    expect(page.locator("h1")).to_contain_text("Imported vectors")
    expect(page.locator("[data-fact=file]")).to_contain_text("steer.safetensors")
    expect(page.locator("[data-fact=block]")).to_have_text(str(vector["block"]))
    expect(page.locator("[data-fact='stored before']")).to_contain_text(f"#{vector['id']}")
    expect(page.locator("text=succeeded")).to_have_count(0)
    # Its samples generate by themselves, and the page shows them when they are done.
    expect(page.locator("article.card .sample")).to_have_count(1)
    expect(page.locator("#progress")).to_have_count(0)
    page.screenshot(path=shots / "19-imported-run.png", full_page=True)

    page.goto(live.url)
    page.set_input_files("#import-form input[name=file]", str(path))
    page.click("#import-form button[type=submit]")
    expect(page.locator("#import-result")).to_contain_text("steer.safetensors was imported already")
    page.screenshot(path=shots / "20-import-again.png", full_page=True)
    page.click("#stored-run")
    page.wait_for_url(run_url)
