"""Refining a vector into new vectors through the server and a real worker: an R-path, a
generalization and a search, each queued from the API and from the vector page, trained as
compute-loop units, stored as a run linked to its vector (its vectors children of it, sampled on its
prompts) and shown on its run page; refusals write nothing."""

from __future__ import annotations

import math
from typing import Any

import pytest
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.models import Generation, Job, Run
from tests.app.conftest import wait_job
from tests.app.helpers import row_counts, vectors_of

PROMPTS = ["Tell me a story.", "What is two plus two?"]
PROBES = ["Name a colour.", "Write a poem about the sea."]
HELD_OUT = ["Hello, how are you today?"]


def soup(response: Any) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


@pytest.fixture(scope="module")
def vector(client: TestClient) -> dict[str, Any]:
    r = client.post("/api/runs", json={"prompts": PROMPTS, "n_vectors": 1, "steps": 5, "radius": 4.0})
    assert r.status_code == 201, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    row: dict[str, Any] = client.get(f"/api/runs/{r.json()['run_id']}/vectors").json()[0]
    return row


def finished(client: TestClient, response: Any, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run a POST queued, once done: (run, what its kind's API says of it)."""
    assert response.status_code == 201, response.text
    assert response.json()["job"]["kind"] == kind
    job = wait_job(client, response.json()["job"]["id"])
    assert job["status"] == "succeeded", job
    run_id = response.json()["run_id"]
    return client.get(f"/api/runs/{run_id}").json(), client.get(f"/api/runs/{run_id}/{kind}").json()


def children(client: TestClient, run: dict[str, Any], vector: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = client.get(f"/api/runs/{run['id']}/vectors").json()
    assert rows and all(r["parent_id"] == vector["id"] and r["block"] == vector["block"] for r in rows)
    return rows


def sampled(client: TestClient, rows: list[dict[str, Any]], prompts: list[str]) -> None:
    """Each of the run's vectors has its gallery sample on each of the run's prompts."""
    with client.app.state.service.db.session() as session:
        for row in rows:
            done = session.scalars(select(Generation.prompt).where(Generation.vector_id == row["id"])).all()
            assert sorted(done) == sorted(prompts)


@pytest.fixture(scope="module")
def rpath(client: TestClient, vector: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    r = client.post(f"/api/vectors/{vector['id']}/rpath", json={"multiples": [2, 0.5, 1, 2]})
    return finished(client, r, "rpath")


def test_an_r_path_is_a_run_of_its_vector(
    client: TestClient, vector: dict[str, Any], rpath: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    run, path = rpath
    assert (run["parent_vector_id"], run["prompts"], run["source"]) == (
        vector["id"],
        PROMPTS,
        vector["block"],
    )
    assert run["radius"] == pytest.approx(vector["norm"], rel=1e-5)
    assert path["vector_id"] == vector["id"] and path["multiples"] == [0.5, 1.0, 2.0]  # sorted, each once
    rows = children(client, run, vector)
    by_id = {r["id"]: r for r in rows}
    assert [p["multiple"] for p in path["points"]] == [0.5, 1.0, 2.0]
    for p in path["points"]:
        assert by_id[p["id"]]["norm"] == pytest.approx(p["multiple"] * vector["norm"], rel=1e-4)
        assert -1.0 <= p["cos_parent"] <= 1.0 and math.isfinite(p["objective"])
        assert by_id[p["id"]]["metrics"]["cos_parent"] == pytest.approx(p["cos_parent"])
    assert path["points"][0]["cos_previous"] is None
    assert all(-1.0 <= p["cos_previous"] <= 1.0 for p in path["points"][1:])
    assert len(path["coordinates"]) == 8 and all(len(c["values"]) == 3 for c in path["coordinates"])
    sampled(client, rows, PROMPTS)
    listed = client.get(f"/api/vectors/{vector['id']}/refinements").json()
    assert run["id"] in [r["id"] for r in listed]


def test_the_r_path_page(
    client: TestClient, vector: dict[str, Any], rpath: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    run, path = rpath
    page = soup(client.get(f"/runs/{run['id']}"))
    assert page.find("h1").get_text(" ", strip=True).startswith(f"R-path #{run['id']}")
    assert page.find(id="parent-vector")["href"] == f"/vectors/{vector['id']}"
    rows = page.select("table.rpath-points tr[data-multiple]")
    assert [float(r["data-multiple"]) for r in rows] == [0.5, 1.0, 2.0]
    assert [r.select_one("td.cos-parent").get_text(strip=True) for r in rows] == [
        f"{p['cos_parent']:.3f}" for p in path["points"]
    ]
    assert len(page.select("table.rpath-coordinates tr[data-coordinate]")) == 8
    assert page.find("canvas", id="rpath-plot")["data-series"] == f"/api/runs/{run['id']}/rpath"
    assert page.find(id="gallery-section") is not None
    shown = soup(client.get(f"/vectors/{vector['id']}"))
    assert shown.select_one(f"#refinements a[href='/runs/{run['id']}']") is not None


def test_a_later_vector_of_an_orthogonal_run_stays_orthogonal_to_the_earlier_ones(client: TestClient) -> None:
    r = client.post("/api/runs", json={"prompts": PROMPTS, "n_vectors": 2, "steps": 5, "radius": 4.0})
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    first, second = vectors_of(client, r.json()["run_id"])
    body = {"multiples": [0.5, 2], "steps": 4}
    run, _ = finished(client, client.post(f"/api/vectors/{second['id']}/rpath", json=body), "rpath")
    assert run["inputs"] == {"orthogonal_to": [first["id"]]}
    for row in vectors_of(client, run["id"]):
        dot = sum(a * b for a, b in zip(row["values"], first["values"], strict=True))
        assert abs(dot) < 1e-3 * row["norm"] * first["norm"]
    page = soup(client.get(f"/runs/{run['id']}"))
    assert (
        page.select_one("[data-fact='orthogonal to']").get_text(" ", strip=True).startswith(f"#{first['id']}")
    )
    run, _ = finished(client, client.post(f"/api/vectors/{first['id']}/rpath", json=body), "rpath")
    assert run["inputs"] == {"orthogonal_to": []}  # the first vector had nothing before it


def test_generalize(client: TestClient, vector: dict[str, Any]) -> None:
    r = client.post(
        f"/api/vectors/{vector['id']}/generalize", json={"probes": PROBES, "held_out": HELD_OUT, "steps": 8}
    )
    run, found = finished(client, r, "generalize")
    assert run["parent_vector_id"] == vector["id"] and run["prompts"] == PROMPTS + PROBES
    (new,) = children(client, run, vector)
    assert found["new_vector_id"] == new["id"] and new["norm"] == pytest.approx(vector["norm"], rel=1e-4)
    assert new["metrics"]["steps"] == 8
    assert set(found["objective"]) == {"before", "after"} and found["objective"]["after"] > 0
    assert -1.0 <= found["cos_parent"] <= 1.0
    assert [h["prompt"] for h in found["held_out"]] == HELD_OUT
    for which in ("before", "after"):
        row = found["held_out"][0][which]
        assert row["flag"] in ("unchanged", "rephrase", "gibberish", "") and row["effect"] is not None
        assert sum(found["means"][which]["flags"].values()) == len(HELD_OUT)
    sampled(client, [new], PROMPTS + PROBES)
    page = soup(client.get(f"/runs/{run['id']}"))
    assert page.find(id="new-vector")["href"] == f"/vectors/{new['id']}"
    cells = page.select("table.held-out td.text[data-which]")
    assert [c["data-which"] for c in cells] == ["before", "after"]
    assert found["held_out"][0]["after"]["text"] in cells[1].get_text()


def test_search(client: TestClient, vector: dict[str, Any]) -> None:
    detector = client.post("/api/detectors", json={"name": "letter t", "kind": "regex", "pattern": "t"})
    assert detector.status_code == 201, detector.text
    body = {"detector_id": detector.json()["id"], "budget": 5, "population": 2, "sigma": 1.0, "keep": 2}
    run, found = finished(client, client.post(f"/api/vectors/{vector['id']}/search", json=body), "search")
    assert run["parent_vector_id"] == vector["id"] and run["inputs"]["detector_id"] == detector.json()["id"]
    assert found["detector"] == "letter t" and found["tried"] == 5
    assert [g["tried"] for g in found["generations"]] == [0, 2, 4, 5]  # within the budget
    assert found["best_score"] >= found["start_score"]
    assert all(b["score"] >= found["start_score"] for b in found["best"])
    rows = children(client, run, vector)
    assert [b["id"] for b in found["best"]] == [r["id"] for r in rows]
    for b, row in zip(found["best"], rows, strict=True):
        assert row["norm"] == pytest.approx(vector["norm"], rel=1e-4)  # the same norm
        assert row["metrics"]["score"] == b["score"]
        assert b["score"] == pytest.approx(
            sum(1.0 if "t" in t.lower() else 0.0 for t in b["texts"]) / len(PROMPTS)
        )
    sampled(client, rows, PROMPTS)
    page = soup(client.get(f"/runs/{run['id']}"))
    assert page.find("canvas", id="search-plot")["data-series"] == f"/api/runs/{run['id']}/search"
    assert len(page.select("table.search-generations tr[data-generation]")) == 4


def test_search_with_a_judge_of_the_vectors_model(client: TestClient, vector: dict[str, Any]) -> None:
    detector = client.post(
        "/api/detectors", json={"name": "a story?", "kind": "judge", "pattern": "Is this a story?"}
    )
    assert detector.status_code == 201, detector.text
    body = {"detector_id": detector.json()["id"], "budget": 2, "population": 2}
    run, found = finished(client, client.post(f"/api/vectors/{vector['id']}/search", json=body), "search")
    assert run["spec"]["detector"] == "judge" and run["spec"]["pattern"] == "Is this a story?"
    assert found["tried"] == 2 and 0.0 <= found["start_score"] <= found["best_score"] <= 1.0
    assert all(0.0 <= s <= 1.0 for b in found["best"] for s in b["scores"])


def test_the_vector_page_forms_start_them(client: TestClient, vector: dict[str, Any]) -> None:
    page = soup(client.get(f"/vectors/{vector['id']}"))
    for form in ("rpath-form", "generalize-form"):
        assert page.find(id=form)["hx-post"].startswith(f"/vectors/{vector['id']}/")
    started = []
    for path, data in (
        ("rpath", {"multiples": "1, 3", "steps": "2"}),
        (
            "generalize",
            {"probes": "Name a colour.\n\n", "held_out": "Hello, how are you today?", "steps": "2"},
        ),
    ):
        r = client.post(f"/vectors/{vector['id']}/{path}", data=data)
        assert r.status_code == 204, r.text
        run_id = int(r.headers["HX-Redirect"].rsplit("/", 1)[1])
        started.append(run_id)
    with client.app.state.service.db.session() as session:
        runs = [session.get(Run, i) for i in started]
        assert [(r.kind, r.parent_vector_id) for r in runs if r] == [
            ("rpath", vector["id"]),
            ("generalize", vector["id"]),
        ]
        assert runs[0] is not None and runs[0].spec["multiples"] == [1.0, 3.0] and runs[0].spec["steps"] == 2
        assert runs[1] is not None and runs[1].spec["held_out"] == HELD_OUT
        jobs = session.scalars(select(Job.id).where(Job.run_id.in_(started))).all()
    for job_id in jobs:  # leaves the worker free for the tests after this one
        assert wait_job(client, job_id)["status"] == "succeeded"


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("rpath", {"multiples": []}, "multiples"),
        ("rpath", {"multiples": [0]}, "multiples"),
        ("rpath", {"multiples": [float(i + 1) for i in range(17)]}, "multiples"),
        ("rpath", {"multiples": [1], "steps": 10**7}, "steps"),
        ("rpath", {"multiples": [1], "prompts": [""]}, "prompts must not be empty"),
        ("generalize", {"probes": [], "held_out": HELD_OUT}, "probes"),
        ("generalize", {"probes": [" "], "held_out": HELD_OUT}, "probes"),
        ("generalize", {"probes": PROBES, "held_out": []}, "held-out"),
        ("generalize", {"probes": PROBES, "held_out": [PROMPTS[0]]}, "must not be trained on"),
        ("generalize", {"probes": [f"prompt {i}" for i in range(70)], "held_out": HELD_OUT}, "at most 64"),
        ("search", {"detector_id": 987654}, "no detector"),
        ("search", {"detector_id": 1, "budget": 513}, "budget"),
        ("search", {"detector_id": 1, "population": 0}, "population"),
        ("search", {"detector_id": 1, "sigma": 0}, "sigma"),
    ],
)
def test_refusals_write_nothing(
    client: TestClient, vector: dict[str, Any], path: str, body: dict[str, Any], words: str
) -> None:
    before = row_counts(client)
    r = client.post(f"/api/vectors/{vector['id']}/{path}", json=body)
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert row_counts(client) == before


def test_missing_things_and_other_models(client: TestClient, vector: dict[str, Any]) -> None:
    judge = client.post(
        "/api/detectors",
        json={
            "name": "elsewhere",
            "kind": "judge",
            "pattern": "Is it French?",
            "judge_model": "some/other-model",
        },
    )
    assert judge.status_code == 201, judge.text
    before = row_counts(client)
    bodies = {
        "rpath": {},
        "generalize": {"probes": PROBES, "held_out": HELD_OUT},
        "search": {"detector_id": 1},
    }
    for path, body in bodies.items():
        assert client.post(f"/api/vectors/987654/{path}", json=body).status_code == 404
        assert client.get(f"/api/runs/{vector['run_id']}/{path}").status_code == 404  # a MELBO run
    r = client.post(f"/api/vectors/{vector['id']}/search", json={"detector_id": judge.json()["id"]})
    assert r.status_code == 422 and "judge model 'some/other-model'" in r.json()["detail"]
    assert client.get("/api/vectors/987654/refinements").status_code == 404
    for path, data in (("rpath", {"multiples": "1, x"}), ("generalize", {"probes": "", "held_out": "a"})):
        page = client.post(f"/vectors/{vector['id']}/{path}", data=data)
        assert page.status_code == 422 and soup(page).find("p", class_="error").get_text(strip=True)
    assert row_counts(client) == before
