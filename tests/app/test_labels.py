"""Labels, notes, facets, full-text search and the tabular exports, through the HTTP API."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient

from app.models import Generation
from tests.app.conftest import wait_job
from tests.app.helpers import vectors_of


@pytest.fixture(scope="module")
def run(client: TestClient) -> dict[str, Any]:
    r = client.post("/api/runs", json={"prompts": ["Name a fruit."], "n_vectors": 3, "method": "random"})
    wait_job(client, r.json()["job"]["id"])
    return {"id": r.json()["run_id"], "vectors": vectors_of(client, r.json()["run_id"])}


def label_id(client: TestClient, name: str) -> int:
    return next(x["id"] for x in client.get("/api/labels").json() if x["name"] == name)


def test_the_starting_labels(client: TestClient) -> None:
    labels = client.get("/api/labels").json()
    assert [x["key"] for x in labels] == list(range(1, 10))
    assert {"unchanged", "refusal", "jailbreak", "gibberish"} <= {x["name"] for x in labels}


def test_labels_need_a_name_and_record_it(client: TestClient, run: dict[str, Any]) -> None:
    vector = run["vectors"][0]["id"]
    body = {"label_id": label_id(client, "refusal"), "vector_id": vector}
    client.cookies.clear()
    r = client.post("/api/labelings", json=body)
    assert r.status_code == 409 and "set your name" in r.json()["detail"]
    client.cookies.set("steerscope_author", "grace")
    assert client.post("/api/labelings", json=body).json()["on"] is True
    assert client.post("/api/labelings", json=body).json()["on"] is False  # toggled back off
    assert client.post("/api/labelings", json={**body, "on": True}).json()["on"] is True
    assert client.post("/api/labelings", json={**body, "on": True}).json()["on"] is True  # idempotent
    r = client.post("/api/labelings", json={"label_id": body["label_id"], "vector_id": 987654})
    assert r.status_code == 422 and "no vector 987654" in r.json()["detail"]
    generation = client.get("/api/generations", params={"run_id": run["id"]}).json()[0]["id"]
    assert client.post(
        "/api/labelings", json={"label_id": body["label_id"], "generation_id": generation}
    ).json()["on"]
    assert client.post("/api/notes", json={"vector_id": vector, "text": "hedges"}).json()["author"] == "grace"

    rows = list(
        csv.DictReader(io.StringIO(client.get("/api/export/labels.csv", params={"run_id": run["id"]}).text))
    )
    assert sorted((r["vector_id"], r["generation_id"], r["author"]) for r in rows) == sorted(
        [(str(vector), "", "grace"), ("", str(generation), "grace")]
    )
    gallery = BeautifulSoup(client.get(f"/runs/{run['id']}/gallery").text, "html.parser")
    facet = gallery.select_one(".facet[data-label='refusal'] .facet-count")
    assert facet is not None and facet.get_text() == "1"
    page = BeautifulSoup(client.get(f"/vectors/{vector}").text, "html.parser")
    assert (
        "refusal" in page.select_one(".chips").get_text() and "hedges" in page.select_one(".note").get_text()
    )


def test_full_text_search_takes_any_words(client: TestClient, run: dict[str, Any]) -> None:
    generation = client.get("/api/generations", params={"run_id": run["id"]}).json()[1]
    with client.app.state.service.db.session() as session:
        row = session.get(Generation, generation["id"])
        assert row is not None
        row.text = 'a "quoted" pomegranate AND NOT *star*'
    found = BeautifulSoup(
        client.get(f"/runs/{run['id']}/gallery", params={"q": "pomegranate"}).text, "html.parser"
    )
    assert [a.get_text() for a in found.select("a.vector-link")] == [f"vector #{generation['vector_id']}"]
    for odd in ['"quoted', "AND NOT", "*star*", "(", "pomegranate -x"]:  # FTS syntax is never interpreted
        assert client.get(f"/runs/{run['id']}/gallery", params={"q": odd}).status_code == 200


def test_tables_export_as_csv_and_jsonl(client: TestClient, run: dict[str, Any]) -> None:
    lines = client.get("/api/export/vectors.jsonl", params={"run_id": run["id"]}).text.splitlines()
    assert [json.loads(x)["id"] for x in lines] == [v["id"] for v in run["vectors"]]
    rows = list(
        csv.DictReader(
            io.StringIO(client.get("/api/export/generations.csv", params={"run_id": run["id"]}).text)
        )
    )
    assert len(rows) == 3 and {"text", "prompt", "seed", "scale"} <= set(rows[0])


def test_the_label_editor_refuses_clashes(client: TestClient) -> None:
    r = client.post(
        "/labels", data={"name": "refusal", "key": "", "colour": "#123456"}, follow_redirects=False
    )
    assert r.status_code == 422 and "already a label called" in r.text
    r = client.post(
        "/labels", data={"name": "new one", "key": "3", "colour": "#123456"}, follow_redirects=False
    )
    assert r.status_code == 422 and "key 3 already belongs" in r.text
    r = client.post("/labels", data={"name": "sarcasm", "key": "", "colour": "red"}, follow_redirects=False)
    assert r.status_code == 422 and "colour must look like" in r.text
    r = client.post(
        "/labels", data={"name": "sarcasm", "key": "", "colour": "#aa00aa"}, follow_redirects=False
    )
    assert r.status_code == 303 and "sarcasm" in {x["name"] for x in client.get("/api/labels").json()}
