"""A server with a real worker process on the tiny model: runs train, store, sample and stream."""

from __future__ import annotations

import math

import pytest
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient

from tests.app.conftest import wait_for, wait_job
from tests.app.helpers import max_abs_cos, parse_sse, vectors_of

PROMPTS = ["Tell me a story.", "What is two plus two?"]


def test_a_run_stores_its_vectors_and_gallery_samples(client: TestClient) -> None:
    r = client.post("/api/runs", json={"prompts": PROMPTS, "n_vectors": 3, "steps": 15, "seed": 1})
    assert r.status_code == 201, r.text
    run_id, job_id = r.json()["run_id"], r.json()["job"]["id"]
    job = wait_job(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 1.0
    run = client.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["radius"] > 0 and run["source"] is not None
    vectors = vectors_of(client, run_id)
    assert [v["index"] for v in vectors] == [0, 1, 2]
    for v in vectors:
        assert math.isclose(v["norm"], run["radius"], rel_tol=1e-4)
        assert v["objective"] > 0 and v["kl"] >= 0 and len(v["metrics"]["curve"]) == v["metrics"]["steps"]
    assert max_abs_cos(vectors) < 1e-4
    samples = client.get("/api/generations", params={"run_id": run_id}).json()
    assert sorted((g["vector_id"], g["prompt"]) for g in samples) == sorted(
        (v["id"], p) for v in vectors for p in PROMPTS
    )
    unsteered = {g["unsteered_id"] for g in samples}
    assert None not in unsteered and len(unsteered) == len(PROMPTS)  # one shared per prompt


def test_random_baseline_and_chain(client: TestClient) -> None:
    r = client.post(
        "/api/runs", json={"prompts": PROMPTS[:1], "n_vectors": 2, "method": "random", "radius": 3.0}
    )
    assert r.status_code == 201, r.text
    job = wait_job(client, r.json()["job"]["id"])
    assert job["status"] == "succeeded", job["error"]
    theta0 = vectors_of(client, r.json()["run_id"])[0]
    assert math.isclose(theta0["norm"], 3.0, rel_tol=1e-5)
    c = client.post("/api/chains", json={"vector_id": theta0["id"], "n_vectors": 2, "steps": 10})
    assert c.status_code == 201, c.text
    job = wait_job(client, c.json()["job"]["id"])
    assert job["status"] == "succeeded", job["error"]
    chain = vectors_of(client, c.json()["run_id"])
    assert [v["parent_id"] for v in chain] == [theta0["id"]] * len(chain) and chain
    assert max_abs_cos([theta0, *chain]) < 1e-4

    # Composing the chain's vectors goes through the JSON API like any other run.
    runs_before = len(client.get("/api/runs").json())
    for refused in ({"chain_run": c.json()["run_id"], "n": 3}, {"chain_run": r.json()["run_id"], "n": 1}):
        answer = client.post("/api/compositions", json=refused)
        assert answer.status_code == 422, answer.text
    assert len(client.get("/api/runs").json()) == runs_before, "a refused composition wrote a run"
    made = client.post("/api/compositions", json={"chain_run": c.json()["run_id"], "n": 2})
    assert made.status_code == 201, made.text
    composed = client.get(f"/api/vectors/{made.json()['vector_id']}", params={"values": True}).json()
    mean = [(a + b) / 2 * math.sqrt(2) for a, b in zip(chain[0]["values"], chain[1]["values"], strict=True)]
    assert composed["values"] == pytest.approx(mean, rel=1e-5, abs=1e-6)
    samples = wait_job(client, made.json()["job"]["id"])
    assert samples["status"] == "succeeded", samples["error"]


def test_job_events_replay_after_last_event_id(client: TestClient) -> None:
    r = client.post("/api/runs", json={"prompts": PROMPTS[:1], "n_vectors": 2, "steps": 8})
    job_id = r.json()["job"]["id"]
    wait_job(client, job_id)
    events = parse_sse(client.get(f"/api/jobs/{job_id}/events").text)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and "vectors" in kinds
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids)
    middle = ids[len(ids) // 2]
    later = parse_sse(client.get(f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": str(middle)}).text)
    assert [int(e["id"]) for e in later] == [i for i in ids if i > middle]


def test_generation_is_answered_from_the_table_the_second_time(client: TestClient) -> None:
    r = client.post("/api/runs", json={"prompts": PROMPTS[:1], "n_vectors": 1, "method": "random"})
    wait_job(client, r.json()["job"]["id"])
    vector = vectors_of(client, r.json()["run_id"])[0]
    body = {
        "prompt": "Name a colour.",
        "vector_id": vector["id"],
        "scale": 2.0,
        "seed": 5,
        "max_new_tokens": 5,
    }
    first = client.post("/api/generations", json=body)
    assert first.status_code == 200, first.text
    steered, unsteered = first.json()["generation"], first.json()["unsteered"]
    assert steered["unsteered_id"] == unsteered["id"] and steered["scale"] == 2.0
    count = len(client.get("/api/generations", params={"limit": 1000}).json())
    assert client.post("/api/generations", json=body).json() == first.json()
    assert len(client.get("/api/generations", params={"limit": 1000}).json()) == count
    streamed = parse_sse(client.post("/api/generations", json={**body, "seed": 6, "stream": True}).text)
    tokens = [e for e in streamed if e["event"] == "token"]
    done = streamed[-1]
    assert done["event"] == "done" and tokens
    assert "".join(t["data"]["text"] for t in tokens) == done["data"]["generation"]["text"]


def test_home_page_shows_runs_and_escapes_text(client: TestClient) -> None:
    r = client.post(
        "/api/runs", json={"prompts": ["<script>alert(1)</script>"], "n_vectors": 1, "method": "random"}
    )
    assert r.status_code == 201, r.text
    wait_for(lambda: client.get(f"/api/jobs/{r.json()['job']['id']}").json()["status"] == "succeeded")
    page = client.get("/")
    soup = BeautifulSoup(page.text, "html.parser")
    assert page.status_code == 200
    assert all(tag.get("src") for tag in soup.find_all("script"))  # only our own vendored files
    assert "<script>alert(1)</script>" in soup.get_text()
