"""A vector's scale sweep through the server and a real worker: queued from the API and from the
vector page, run as compute-loop units, stored as a run linked to its vector (completions as
generations, figures per scale in its result), shown on both pages; refusals write nothing."""

from __future__ import annotations

import math
from typing import Any

import pytest
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.models import Generation, Run
from tests.app.conftest import wait_for, wait_job
from tests.app.helpers import row_counts

PROMPTS = ["Tell me a story.", "What is two plus two?"]


def soup(response: Any) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


@pytest.fixture(scope="module")
def vector(client: TestClient) -> dict[str, Any]:
    r = client.post("/api/runs", json={"prompts": PROMPTS, "n_vectors": 2, "steps": 5})
    assert r.status_code == 201, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    row: dict[str, Any] = client.get(f"/api/runs/{r.json()['run_id']}/vectors").json()[0]
    return row


@pytest.fixture(scope="module")
def swept(client: TestClient, vector: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/api/vectors/{vector['id']}/scale-sweep", json={"scales": [8, 0, 0.5, 2, 2]})
    assert r.status_code == 201, r.text
    assert r.json()["job"]["kind"] == "scale_sweep"
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    sweep: dict[str, Any] = client.get(f"/api/runs/{r.json()['run_id']}/scale-sweep").json()
    return sweep


def marker(points: list[dict[str, Any]], which: str) -> float | None:
    hits = [p["scale"] for p in points if p[which]]
    return min(hits, key=lambda s: (abs(s), s < 0)) if hits else None


def test_the_sweep_is_a_run_of_its_vector(
    client: TestClient, vector: dict[str, Any], swept: dict[str, Any]
) -> None:
    run = client.get(f"/api/runs/{swept['run_id']}").json()
    assert (run["kind"], run["parent_vector_id"], run["status"]) == ("scale_sweep", vector["id"], "succeeded")
    assert run["spec"]["block"] == vector["block"] and run["prompts"] == PROMPTS
    assert swept["vector_id"] == vector["id"] and swept["norm"] == pytest.approx(vector["norm"])
    assert swept["scales"] == [0.0, 0.5, 2.0, 8.0]  # sorted, each once
    assert swept["max_new_tokens"] == client.app.state.service.settings.gallery_tokens
    listed = client.get(f"/api/vectors/{vector['id']}/scale-sweeps").json()
    assert [s["run_id"] for s in listed] == [swept["run_id"]]


def test_figures_per_scale_and_markers(swept: dict[str, Any]) -> None:
    points = swept["points"]
    assert [p["scale"] for p in points] == swept["scales"]
    zero = points[0]
    assert zero["kl"] == pytest.approx(0.0, abs=1e-6) and zero["effect"] == 0.0
    assert zero["flags"] == {"unchanged": len(PROMPTS)} and not zero["changed"]
    assert all(p["kl"] > 0 and math.isfinite(p["fluency"]) for p in points[1:])
    assert all(sum(p["flags"].values()) == len(PROMPTS) for p in points)
    assert swept["first_change"] == marker(points, "changed")
    assert swept["breaks"] == marker(points, "broken")


def test_completions_are_stored_as_generations(
    client: TestClient, vector: dict[str, Any], swept: dict[str, Any]
) -> None:
    steered, plain = swept["completions"], swept["unsteered"]
    assert [(g["prompt"], g["scale"]) for g in steered] == [(p, s) for p in PROMPTS for s in swept["scales"]]
    assert [g["prompt"] for g in plain] == PROMPTS
    assert all(g["vector_id"] == vector["id"] and g["temperature"] == 0.0 for g in steered)
    assert all(
        g["flag"] in ("unchanged", "rephrase", "gibberish", "") and g["effect"] is not None for g in steered
    )
    by_prompt = {g["prompt"]: g for g in plain}
    for g in steered:
        assert g["unsteered_id"] == by_prompt[g["prompt"]]["id"]
        if g["scale"] == 0.0:
            assert g["text"] == by_prompt[g["prompt"]]["text"] and g["flag"] == "unchanged"
    # The flags per scale are the stored completions' flags.
    for point in swept["points"]:
        flags = [g["flag"] or "changed" for g in steered if g["scale"] == point["scale"]]
        assert {f: flags.count(f) for f in flags} == point["flags"]
    with client.app.state.service.db.session() as session:
        ids = [g["id"] for g in steered]
        assert len(session.scalars(select(Generation).where(Generation.id.in_(ids))).all()) == len(ids)


def test_the_pages_show_it(client: TestClient, vector: dict[str, Any], swept: dict[str, Any]) -> None:
    page = soup(client.get(f"/runs/{swept['run_id']}"))
    assert page.find(id="parent-vector")["href"] == f"/vectors/{vector['id']}"
    assert (
        page.find("canvas", id="scale-sweep-plot")["data-series"]
        == f"/api/runs/{swept['run_id']}/scale-sweep"
    )
    assert len(page.select("table.scale-points tr[data-scale]")) == len(swept["scales"])
    assert page.select_one("[data-fact='first change']") is not None
    assert len(page.select("table.scales td.text[data-scale]")) == len(PROMPTS) * len(swept["scales"])
    assert page.find(id="gallery-section") is None
    shown = soup(client.get(f"/vectors/{vector['id']}"))
    assert shown.find(id="scale-sweep-form") is not None
    assert shown.select_one(f"ul.sweeps a[href='/runs/{swept['run_id']}']") is not None
    assert shown.find("canvas", id="scale-sweep-plot") is not None
    words = shown.find(id="scale-sweep-markers").get_text(" ", strip=True)
    first = swept["first_change"]
    assert (f"× {first:.4g}" in words) if first is not None else ("No scale" in words)


def test_the_vector_page_form_starts_one_and_follows_it(client: TestClient, vector: dict[str, Any]) -> None:
    r = client.post(f"/vectors/{vector['id']}/scale-sweep", data={"scales": "0, 1 3"})
    assert r.status_code == 200, r.text
    section = soup(r).find(id="scale-sweep")
    with client.app.state.service.db.session() as session:
        newest = session.scalars(select(Run).where(Run.kind == "scale_sweep").order_by(Run.id.desc())).first()
        assert newest is not None and newest.spec["scales"] == [0.0, 1.0, 3.0]
        assert newest.parent_vector_id == vector["id"]
        run_id = newest.id
    if section.has_attr("data-live"):  # still running when the answer came: it polls for itself
        assert section["hx-get"] == f"/vectors/{vector['id']}/scale-sweep"

    def done() -> BeautifulSoup | None:
        fresh = soup(client.get(f"/vectors/{vector['id']}/scale-sweep")).find(id="scale-sweep")
        return None if fresh.has_attr("data-live") else fresh

    finished = wait_for(done, what="the sweep section to stop polling")
    assert finished.find("canvas", id="scale-sweep-plot")["data-series"] == f"/api/runs/{run_id}/scale-sweep"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"scales": [float(i) for i in range(33)]}, "scales"),
        ({"scales": []}, "scales"),
        ({"scales": [1e6]}, "scales must be finite numbers from"),
        ({"scales": [1], "max_new_tokens": 10**6}, "max new tokens"),
        ({"scales": [1], "prompts": [""]}, "prompts must not be empty"),
        ({"scales": [1], "block": 0}, "not a field"),
    ],
)
def test_refusals_write_nothing(
    client: TestClient, vector: dict[str, Any], swept: dict[str, Any], body: dict[str, Any], words: str
) -> None:
    before = row_counts(client)
    r = client.post(f"/api/vectors/{vector['id']}/scale-sweep", json=body)
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert row_counts(client) == before


def test_non_finite_scales_and_missing_things(
    client: TestClient, vector: dict[str, Any], swept: dict[str, Any]
) -> None:
    before = row_counts(client)
    url = f"/api/vectors/{vector['id']}/scale-sweep"
    for raw in ('{"scales": [NaN]}', '{"scales": [1, Infinity]}'):
        r = client.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "finite" in r.json()["detail"], r.text
    assert client.post("/api/vectors/987654/scale-sweep", json={}).status_code == 404
    assert client.get("/api/vectors/987654/scale-sweeps").status_code == 404
    assert client.get(f"/api/runs/{vector['run_id']}/scale-sweep").status_code == 404  # a MELBO run
    for words in ("abc", "1, inf", ""):
        page = client.post(f"/vectors/{vector['id']}/scale-sweep", data={"scales": words})
        assert page.status_code == 422
        assert soup(page).find(id="scale-sweep-error").get_text(strip=True)
    assert row_counts(client) == before
