"""Concepts as a run kind, and a vector's dashboard: made, read, stored, exported, shown; bad input
refused with a clear 4xx and nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient
from safetensors.numpy import save

from app.main import create_app
from tests.app.conftest import make_settings, wait_job
from tests.app.helpers import row_counts

WITH = ["Tell me about zebra stripes.", "Why do zebra herds run?", "Draw a zebra for me.", "A zebra at dawn."]
WITHOUT = ["Tell me about the sea.", "Why do rivers run?", "Draw a house for me.", "A city at dawn."]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[TestClient]:
    """A server whose corpus is small: 8 bank prompts, 4 answer tokens each."""
    data = tmp_path_factory.mktemp("concepts") / "data"
    settings = make_settings(data, tiny_dir, corpus_bank=8, corpus_tokens=4)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def concept(client: TestClient) -> dict[str, Any]:
    r = client.post(
        "/api/concepts", json={"positive": WITH, "negative": WITHOUT, "block": 1, "name": "zebra"}
    )
    assert r.status_code == 201, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    run = client.get(f"/api/runs/{r.json()['run_id']}").json()
    vectors = client.get(f"/api/runs/{run['id']}/vectors").json()
    return {"run": run, "vector": vectors[0]}


@pytest.fixture(scope="module")
def imported(client: TestClient) -> dict[str, Any]:
    values = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    r = client.post(
        "/api/imports", files={"file": ("d.safetensors", save({"vectors": values}))}, data={"block": "1"}
    )
    assert r.status_code == 201, r.text
    for job in r.json()["sample_jobs"]:
        wait_job(client, job)
    return dict(r.json())


def test_a_concept_is_a_run_with_one_vector_at_its_block(client: TestClient, concept: dict[str, Any]) -> None:
    run, vector = concept["run"], concept["vector"]
    assert run["kind"] == "concept" and vector["block"] == 1
    found = run["result"]["concept"]
    assert found["positive"] == len(WITH) and found["negative"] == len(WITHOUT)
    assert 0.0 <= found["auc"] <= 1.0 and found["threshold"] == pytest.approx(vector["metrics"]["threshold"])
    page = BeautifulSoup(client.get(f"/runs/{run['id']}").text, "html.parser")
    assert page.select_one("#concept-vector")["href"] == f"/vectors/{vector['id']}"
    listed = BeautifulSoup(client.get("/concepts").text, "html.parser")
    assert "zebra" in listed.select_one("#concept-list").get_text()
    runs = BeautifulSoup(client.get("/runs").text, "html.parser")  # grouped from the kinds table
    assert "Concepts" in runs.get_text() and runs.select_one(f"a[href='/runs/{run['id']}']") is not None


def test_a_concept_detects_and_steers_a_chat(client: TestClient, concept: dict[str, Any]) -> None:
    r = client.post(f"/api/concepts/{concept['run']['id']}/detect", json={"prompts": [WITH[0], WITHOUT[0]]})
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    assert [s["prompt"] for s in scores] == [WITH[0], WITHOUT[0]]
    # The training prompts score as they did in training.
    trained = concept["run"]["result"]["concept"]
    assert scores[0]["score"] == pytest.approx(trained["positive_scores"][0], abs=1e-3)
    assert scores[0]["present"] == (scores[0]["score"] > r.json()["threshold"])
    page = BeautifulSoup(
        client.post(f"/concepts/{concept['run']['id']}/detect", data={"prompts": WITH[1]}).text, "html.parser"
    )
    assert WITH[1] in page.select_one("#detect-result").get_text()
    chat = client.post("/chat/new", data={"vector_id": str(concept["vector"]["id"])}, follow_redirects=False)
    assert chat.status_code == 303


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"positive": WITH[:1], "negative": WITHOUT}, "positive"),
        ({"positive": WITH, "negative": WITHOUT, "method": "median"}, "method"),
        ({"positive": WITH, "negative": WITHOUT, "block": 99}, "block 99 is out of range"),
        ({"positive": WITH, "negative": ["  ", "x"]}, "must not be empty"),
        ({"positive": WITH, "negative": WITHOUT[:3], "method": "pca"}, "pairs the prompts"),
        ({"positive": WITH, "negative": WITHOUT, "colour": "red"}, "colour"),
    ],
)
def test_a_bad_concept_is_refused_and_writes_nothing(
    client: TestClient, body: dict[str, Any], says: str
) -> None:
    before = row_counts(client)
    r = client.post("/api/concepts", json=body)
    assert r.status_code == 422 and says in r.text, r.text
    assert row_counts(client) == before


def test_the_concept_form_refuses_bad_input_in_place(client: TestClient) -> None:
    before = row_counts(client)
    r = client.post("/concepts", data={"positive": "only one", "negative": "a\nb", "block": "1"})
    assert r.status_code == 422
    page = BeautifulSoup(r.text, "html.parser")
    assert page.select_one("#concept-error").get_text().strip()
    assert page.select_one("textarea[name=positive]").get_text() == "only one"  # kept for correcting
    r = client.post("/concepts", data={"positive": "a\nb", "negative": "c\nd", "block": "x"})
    assert r.status_code == 422
    assert row_counts(client) == before


def test_detecting_refuses_what_it_cannot_score(
    client: TestClient, imported: dict[str, Any], concept: dict[str, Any]
) -> None:
    before = row_counts(client)
    assert (
        client.post(f"/api/concepts/{imported['run_id']}/detect", json={"prompts": ["x"]}).status_code == 422
    )
    assert client.post("/api/concepts/999999/detect", json={"prompts": ["x"]}).status_code == 404
    assert client.post("/api/concepts/1/detect", json={"prompts": []}).status_code == 422
    assert client.post("/api/concepts/1/detect", json={"prompt": "x"}).status_code == 422
    r = client.post(f"/api/concepts/{concept['run']['id']}/detect", json={"prompts": ["word " * 3000]})
    assert r.status_code == 422 and "context" in r.text, r.text
    assert row_counts(client) == before


def test_a_vector_is_read_stored_shown_and_exported(
    client: TestClient, imported: dict[str, Any], concept: dict[str, Any]
) -> None:
    a = imported["vector_ids"][0]
    assert client.get(f"/api/vectors/{a}/dashboard").status_code == 404  # never read: nothing computed
    page = BeautifulSoup(client.get(f"/vectors/{a}").text, "html.parser")
    assert page.select_one("#dashboard-empty") is not None
    r = client.post(f"/api/vectors/{a}/dashboard", json={})
    assert r.status_code == 201, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    found = client.get(f"/api/vectors/{a}/dashboard").json()
    assert found["block"] == 1 and len(found["tokens"]["direct"]["promoted"]) == 20
    assert found["corpus"]["kinds"]["bank"] == 8
    assert found["contexts"] and found["prompts"] and sum(found["histogram"]["prompt"]) > 0
    assert [c["name"] for c in found["concepts"]] == ["zebra"]  # concepts at its block, computed now
    assert found["downstream"] is None  # an import has no target block to read downstream
    page = BeautifulSoup(client.get(f"/vectors/{a}").text, "html.parser")
    assert len(page.select("#dash-contexts li")) == len(found["contexts"])
    assert len(page.select("#dash-prompts form.try-unsteered")) == len(found["prompts"])
    assert "zebra" in page.select_one("#dash-concepts").get_text()
    assert page.select_one("#dashboard[data-live]") is None  # finished: it stops asking
    # The gallery card shows its top promoted tokens; the gallery filters by concept cosine.
    run = imported["run_id"]
    card = BeautifulSoup(client.get(f"/runs/{run}").text, "html.parser").select_one(f"#card-{a}")
    chips = [t.get_text() for t in card.select(".promoted .token")]
    read = found["tokens"]["effect"] or found["tokens"]["direct"]  # in effect where it was read
    assert chips == [t["text"] for t in read["promoted"][:5]]
    cv = concept["vector"]["id"]
    everything = BeautifulSoup(client.get(f"/runs/{run}?concept={cv}&min_cosine=-2").text, "html.parser")
    assert len(everything.select("article.card")) == 2
    assert len(everything.select(".concept-cosine")) == 2
    nothing = BeautifulSoup(client.get(f"/runs/{run}?concept={cv}&min_cosine=2").text, "html.parser")
    assert nothing.select("article.card") == []


def test_a_trained_vector_is_also_read_downstream(client: TestClient) -> None:
    """A run with an objective reads its vectors again at its target block: the prompts that put
    the model where the vector puts it there, shown with a try-unsteered button each; an import
    has no target block, so none (above). Its answers are searched too: the corpus prompts the
    model already answers the way the vector makes it answer, each with its own answer."""
    r = client.post("/api/runs", json={"prompts": ["Tell me a story.", "Hi."], "n_vectors": 1, "steps": 3})
    assert r.status_code == 201, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    run = client.get(f"/api/runs/{r.json()['run_id']}").json()
    vector = client.get(f"/api/runs/{run['id']}/vectors").json()[0]["id"]
    read = client.post(f"/api/vectors/{vector}/dashboard", json={})
    assert read.status_code == 201, read.text
    assert wait_job(client, read.json()["job"]["id"])["status"] == "succeeded"
    down = client.get(f"/api/vectors/{vector}/dashboard").json()["downstream"]
    assert down["block"] == run["target"] - 1 and down["positions"].startswith("user turn")
    assert len(down["prompts"]) == 10 and down["change_norm"] > 0
    page = BeautifulSoup(client.get(f"/vectors/{vector}").text, "html.parser")
    assert len(page.select("#dash-downstream form.try-unsteered")) == len(down["prompts"])
    assert down["prompts"][0]["prompt"] in page.select_one("#dash-downstream").get_text()
    # And searched by answers: the run's prompts answered steered, the corpus's own answers beside.
    alike = client.get(f"/api/vectors/{vector}/dashboard").json()["alike"]
    assert [a["prompt"] for a in alike["steered"]] == run["prompts"] and alike["changed"] == 2
    assert len(alike["prompts"]) == 10 and all(p["answer"] for p in alike["prompts"])
    listed = page.select("#dash-alike > li")
    assert len(listed) == 10 and len(page.select("#dash-alike form.try-unsteered")) == 10
    assert alike["prompts"][0]["answer"].strip() in listed[0].select_one(".own-answer").get_text()


def test_a_bad_reading_is_refused_and_writes_nothing(client: TestClient, imported: dict[str, Any]) -> None:
    a = imported["vector_ids"][1]
    before = row_counts(client)
    assert client.post("/api/vectors/999999/dashboard", json={}).status_code == 404
    r = client.post(f"/api/vectors/{a}/dashboard", json={"rank_by": "median"})
    assert r.status_code == 422 and "rank_by" in r.text
    assert client.post(f"/api/vectors/{a}/dashboard", json={"bank": 3}).status_code == 422
    r = client.post(f"/vectors/{a}/dashboard", data={"rank_by": "median"})
    assert r.status_code == 422
    assert BeautifulSoup(r.text, "html.parser").select_one("#dashboard-error").get_text().strip()
    assert row_counts(client) == before
