"""Bad requests get a 422 with a readable message and write nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.models import Generation, Job, LanguageModel, Run

GOOD = {"prompts": ["Tell me a story."], "n_vectors": 2, "steps": 5}


def counts(client: TestClient) -> tuple[int, ...]:
    with client.app.state.service.db.session() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(t)) or 0
            for t in (Run, Job, LanguageModel, Generation)
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source": 99}, "source block 99 is out of range"),
        ({"source": -1}, "source: must be at least 0"),
        ({"target": 40}, "target 40 must lie between"),
        ({"radius": 0}, "R (radius) must be a finite number > 0"),
        ({"radius": -2.5}, "R (radius) must be a finite number > 0"),
        ({"radius": float("inf")}, "R (radius) must be a finite number > 0"),
        ({"radius": float("nan")}, "R (radius) must be a finite number > 0"),
        ({"n_vectors": 0}, "number of vectors must be between 1 and"),
        ({"n_vectors": 100_000}, "number of vectors must be between 1 and"),
        ({"steps": 10**7}, "steps must be between 0 and"),
        ({"prompts": []}, "give at least one prompt"),
        ({"prompts": ["   "]}, "prompts must not be empty"),
        ({"prompts": ["word " * 400]}, "exceeds the model's context"),
        ({"model": "no-such/model"}, "cannot load model 'no-such/model'"),
        ({"positions": "middle"}, "positions"),
        ({"n_vectors": "many"}, "n_vectors: must be a whole number"),
        ({"colour": "red"}, "colour: is not a field this request takes"),
    ],
)
def test_invalid_runs_are_refused_and_write_nothing(
    client: TestClient, change: dict[str, Any], message: str
) -> None:
    before = counts(client)
    # json.dumps writes Infinity and NaN as JavaScript does; the server must refuse them, not crash.
    body = json.dumps({**GOOD, **change})
    r = client.post("/api/runs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert counts(client) == before


def test_invalid_chains_and_generations_are_refused(client: TestClient) -> None:
    before = counts(client)
    assert client.post("/api/chains", json={"vector_id": 123456}).status_code == 404
    r = client.post("/api/generations", json={"prompt": "  "})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = client.post("/api/generations", json={"prompt": "hi", "vector_id": 123456})
    assert r.status_code == 404
    r = client.post("/api/generations", json={"prompt": "hi", "max_new_tokens": 10**6})
    assert r.status_code == 422 and "max new tokens" in r.json()["detail"]
    assert counts(client) == before


def test_a_body_that_is_not_json_is_refused(client: TestClient) -> None:
    before = counts(client)
    r = client.post("/api/runs", content="not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"] == "the request body is not valid JSON"
    assert counts(client) == before


def test_unknown_jobs_and_runs_are_404(client: TestClient) -> None:
    assert client.get("/api/jobs/999999").status_code == 404
    assert client.post("/api/jobs/999999/cancel").status_code == 404
    assert client.get("/api/runs/999999").status_code == 404
    assert client.get("/api/jobs/999999/events").status_code == 404
