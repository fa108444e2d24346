"""Runs of the other discovery methods through the server (real worker, tiny model): DCT."""

from __future__ import annotations

import math

from bs4 import BeautifulSoup
from fastapi.testclient import TestClient

from tests.app.conftest import wait_job
from tests.app.helpers import row_counts, vectors_of

PROMPTS = ["Tell me a story.", "What is two plus two?"]


def test_a_dct_run_calibrates_ranks_by_alpha_and_samples_every_vector(client: TestClient) -> None:
    body = {"prompts": PROMPTS, "method": "dct", "n_vectors": 5, "steps": 3, "batch_size": 2, "seed": 2}
    r = client.post("/api/runs", json=body)
    assert r.status_code == 201, r.text
    run_id = r.json()["run_id"]
    job = wait_job(client, r.json()["job"]["id"])
    assert job["status"] == "succeeded", job["error"]
    run = client.get(f"/api/runs/{run_id}").json()
    assert run["kind"] == "dct" and run["radius"] > 0
    assert abs(run["result"]["calibration"]["ratio"] / 0.5 - 1) <= 0.02
    assert "p" not in run["spec"] and run["spec"]["steps"] == 3
    vectors = vectors_of(client, run_id)
    assert [v["index"] for v in vectors] == list(range(5))
    scores = [v["metrics"]["score"] for v in vectors]
    assert scores == sorted(scores, reverse=True)
    for v in vectors:
        assert math.isclose(v["norm"], run["radius"], rel_tol=1e-4) and v["kl"] >= 0
        assert math.isclose(v["metrics"]["alpha"] ** 2, v["metrics"]["score"], rel_tol=1e-5)
        assert len(v["metrics"]["curve"]) == 3
    samples = client.get("/api/generations", params={"run_id": run_id}).json()
    assert len(samples) == 5 * len(PROMPTS)
    page = BeautifulSoup(
        client.get(f"/runs/{run_id}", params={"sort": "alpha", "desc": "true"}).text, "html.parser"
    )
    assert "DCT" in page.text or "dct" in page.text
    shown = [int(card["data-index"]) for card in page.select("article.card")]
    assert shown == list(range(5))  # α² descending is the run's own order
    assert page.select_one("article.card .alpha") is not None
    ascending = BeautifulSoup(client.get(f"/runs/{run_id}", params={"sort": "alpha"}).text, "html.parser")
    assert [int(c["data-index"]) for c in ascending.select("article.card")] == list(range(4, -1, -1))


def test_melbo_only_fields_are_refused_for_dct_and_nothing_is_written(client: TestClient) -> None:
    before = row_counts(client)
    for field, value in (("p", 4.0), ("orthogonal", False), ("lr", 0.1), ("mode", "reference")):
        r = client.post("/api/runs", json={"prompts": PROMPTS, "method": "dct", field: value})
        assert r.status_code == 422 and f"{field} applies to MELBO only" in r.text, r.text
    r = client.post("/api/runs", json={"prompts": PROMPTS, "method": "dct", "n_vectors": 65})
    assert r.status_code == 422 and "at most the model's width (64)" in r.text
    form = {"prompts": "Tell me a story.", "method": "dct", "p": "3", "n_vectors": "4"}
    page = client.post("/runs/new", data=form)
    assert page.status_code == 422
    error = BeautifulSoup(page.text, "html.parser").select_one("#error-p")
    assert error is not None and "applies to MELBO only" in error.text
    assert row_counts(client) == before


def test_the_form_starts_a_dct_run(client: TestClient) -> None:
    form = {"prompts": "Tell me a story.", "method": "dct", "n_vectors": "3", "steps": "2", "radius": "1.5"}
    form["orthogonal"] = "on"  # checked, as the form opens
    r = client.post("/runs/new", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    run_id = int(r.headers["location"].rsplit("/", 1)[1])
    run = client.get(f"/api/runs/{run_id}").json()
    assert run["kind"] == "dct" and run["spec"]["radius"] == 1.5


def test_beta_is_a_dct_field_checked_by_the_engine(client: TestClient) -> None:
    for job in client.get("/api/jobs").json():  # the events of earlier runs are not this test's
        wait_job(client, job["id"])
    before = row_counts(client)
    r = client.post("/api/runs", json={"prompts": PROMPTS, "beta": 0.5})
    assert r.status_code == 422 and "beta applies to dct only" in r.text, r.text
    r = client.post("/api/runs", json={"prompts": PROMPTS, "method": "dct", "beta": 1.5})
    assert r.status_code == 422 and "beta must be in (0, 1]" in r.text, r.text
    assert row_counts(client) == before
    form = {
        "prompts": "Tell me a story.",
        "method": "dct",
        "n_vectors": "2",
        "steps": "1",
        "orthogonal": "on",
    }
    r = client.post("/runs/new", data={**form, "radius": "1.5", "beta": "0.5"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    run = client.get(f"/api/runs/{int(r.headers['location'].rsplit('/', 1)[1])}").json()
    assert run["spec"]["beta"] == 0.5
