"""The other discovery methods from the new-run form to the gallery: a DCT run and a run of steering
adapters, whose page then offers the PEFT export."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import TIMEOUT_MS, LiveServer


def start_from_the_form(page: Page, live: LiveServer, method: str, fields: dict[str, str]) -> str:
    page.goto(f"{live.url}/runs/new")
    page.fill("#prompts", "Tell me a story.\nWhat is two plus two?")
    page.select_option("#method", method)
    for name, value in fields.items():
        page.fill(f"#{name}", value)
    page.click("#start-run")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    expect(page.locator("#job-progress")).to_have_attribute("data-status", "succeeded")
    return page.url


def test_a_dct_run_and_an_adapter_run_from_the_form_to_the_gallery(
    page: Page, live: LiveServer, api: httpx.Client, shots: Path, tmp_path: Path
) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    start_from_the_form(page, live, "dct", {"n_vectors": "3", "steps": "2"})
    expect(page.locator("article.card")).to_have_count(3)
    expect(page.locator("article.card .alpha").first).to_be_visible()
    expect(page.locator("article.card .sample").first).to_be_visible()
    page.screenshot(path=shots / "40-dct-gallery.png", full_page=True)

    run_url = start_from_the_form(page, live, "adapter", {"n_vectors": "2", "steps": "3", "rank": "2"})
    expect(page.locator("article.card")).to_have_count(2)
    expect(page.locator("article.card .sample").first).to_be_visible()
    expect(page.locator("[data-fact=rank]")).to_contain_text("2")
    page.screenshot(path=shots / "41-adapter-gallery.png", full_page=True)
    run = api.get(f"/api/runs/{int(run_url.rsplit('/', 1)[1])}").json()
    assert run["kind"] == "adapter" and run["spec"]["rank"] == 2

    page.locator("a.vector-link").first.click()
    page.wait_for_url(re.compile(r"/vectors/\d+$"))
    expect(page.locator("h1")).to_contain_text("Adapter #")
    expect(page.locator("#adapter-rank")).to_have_text("2")
    page.screenshot(path=shots / "42-adapter.png", full_page=True)
    with page.expect_download() as download:
        page.click("#export-peft")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert re.fullmatch(r"adapter-\d+\.zip", saved.name)
    with zipfile.ZipFile(saved) as archive:
        names = {Path(n).name for n in archive.namelist()}
    assert names == {"adapter_model.safetensors", "adapter_config.json"}
