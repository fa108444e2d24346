"""Scores and behaviours stored and shown: a learned run and its random twin on the tiny model,
scored by the engine (engine/discovery/findings.py) and stored through app/discovery/findings.py."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.models import Behaviour, Generation, Job, Run, Vector
from app.settings import Settings
from tests.app.conftest import make_settings, wait_job
from tests.app.helpers import row_counts, score_run

PROMPTS = ["Tell me a story.", "What is two plus two?"]


@pytest.fixture(scope="module")
def shared_settings(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Settings:
    """The module's server scores each learned run by itself, as a user's does."""
    return make_settings(tmp_path_factory.mktemp("behaviours") / "data", tiny_dir, auto_score=True)


def soup(response: Any) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def start(client: TestClient, **body: Any) -> int:
    r = client.post("/api/runs", json={"prompts": PROMPTS, "n_vectors": 4, "steps": 5, **body})
    assert r.status_code == 201, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    return int(r.json()["run_id"])


@pytest.fixture(scope="module")
def scored(client: TestClient) -> dict[str, Any]:
    learned = start(client, twin=True)
    service = client.app.state.service
    with service.db.session() as session:
        twin_run = session.scalars(select(Run).where(Run.twin_of == learned)).one()
        twin, twin_job = twin_run.id, session.scalars(select(Job).where(Job.run_id == twin_run.id)).one().id
    assert wait_job(client, twin_job)["status"] == "succeeded"
    done = score_run(service, learned)  # the worker scores the pair once both have finished
    return {"run": learned, "twin": twin, "rows": done["rows"], "result": done["result"]}


def test_the_random_twin_shares_r_prompts_and_settings(client: TestClient, scored: dict[str, Any]) -> None:
    with client.app.state.service.db.session() as session:
        learned, twin = session.get(Run, scored["run"]), session.get(Run, scored["twin"])
        assert learned is not None and twin is not None
        assert (twin.kind, twin.twin_of, twin.status) == ("random", learned.id, "succeeded")
        assert twin.radius is not None and twin.radius == pytest.approx(learned.radius, rel=1e-9)
        assert (twin.prompts, twin.source, twin.target) == (learned.prompts, learned.source, learned.target)
        assert {k: v for k, v in twin.spec.items() if k != "method"} == {
            k: v for k, v in learned.spec.items() if k != "method"
        }
        assert len(twin.vectors) == len(learned.vectors) == 4
    # Without asking for one there is no twin.
    plain = start(client)
    with client.app.state.service.db.session() as session:
        assert session.scalars(select(Run).where(Run.twin_of == plain)).first() is None


def test_the_twin_says_what_it_is_and_shows_the_scores(client: TestClient, scored: dict[str, Any]) -> None:
    page = soup(client.get(f"/runs/{scored['twin']}"))
    said = page.find(id="twin-of")
    assert said is not None and f"random twin of run #{scored['run']}" in " ".join(said.get_text().split())
    assert page.find(id="twin-behaviours")["href"] == f"/runs/{scored['run']}/behaviours"
    assert page.find(id="scoring") is None, "a twin is scored with its run, never 'not scored yet'"


def test_the_twin_runs_right_behind_its_run(client: TestClient, scored: dict[str, Any]) -> None:
    """Work queued after a run with a twin waits for the twin, as it waits for the run."""
    body = {"prompts": PROMPTS[:1], "n_vectors": 1, "steps": 2}
    first = client.post("/api/runs", json={**body, "twin": True}).json()
    later = client.post("/api/runs", json=body).json()
    assert wait_job(client, later["job"]["id"])["status"] == "succeeded"
    with client.app.state.service.db.session() as session:
        twin_run = session.scalars(select(Run).where(Run.twin_of == first["run_id"])).one()
        twin_job = session.scalars(select(Job).where(Job.run_id == twin_run.id)).one()
        later_job = session.get(Job, later["job"]["id"])
        assert twin_job.priority == first["job"]["priority"]
        assert twin_job.started_at is not None and later_job is not None and later_job.started_at is not None
        assert twin_job.started_at <= later_job.started_at


def test_the_worker_scores_the_pair_once_after_the_twin(client: TestClient, scored: dict[str, Any]) -> None:
    with client.app.state.service.db.session() as session:
        scorings = session.scalars(select(Run).where(Run.kind == "score")).all()
        mine = [r for r in scorings if r.inputs["for_run"] == scored["run"]]
        assert len(mine) == 1  # not once after the run and again after its twin
        assert not [r for r in scorings if r.inputs["for_run"] == scored["twin"]]  # a baseline is not scored
        twin_job = session.scalars(select(Job).where(Job.run_id == scored["twin"])).one()
        score_job = session.scalars(select(Job).where(Job.run_id == mine[0].id)).one()
        assert twin_job.finished_at is not None and score_job.created_at >= twin_job.finished_at
    show = soup(client.get(f"/runs/{scored['run']}"))
    assert show.find(id="score-run").get_text() == "Score again"


def test_score_on_request(client: TestClient, scored: dict[str, Any]) -> None:
    first = client.post(f"/api/runs/{scored['run']}/score")
    assert first.status_code == 201, first.text
    again = client.post(f"/api/runs/{scored['run']}/score")  # while it waits: the same job
    assert again.json()["job"]["id"] == first.json()["job"]["id"]
    assert wait_job(client, first.json()["job"]["id"])["status"] == "succeeded"
    behaviours = client.get(f"/api/runs/{scored['run']}/behaviours").json()
    assert sum(b["size"] for b in behaviours) == len(scored["rows"])  # replaced, not added to


def test_score_refusals_write_nothing(client: TestClient, scored: dict[str, Any]) -> None:
    r = client.post("/api/calibrations", json={"prompts": PROMPTS})
    assert r.status_code == 201, r.text
    calibration = r.json()["run_id"]
    wait_job(client, r.json()["job"]["id"])
    before = row_counts(client)
    refused = client.post(f"/api/runs/{calibration}/score")
    assert refused.status_code == 422 and "no gallery" in refused.json()["detail"]
    assert client.post("/api/runs/987654/score").status_code == 404
    assert row_counts(client) == before


def test_completions_to_score_are_the_run_and_its_twin(scored: dict[str, Any]) -> None:
    rows = scored["rows"]
    assert len(rows) == 2 * 4 * 2  # two runs x four vectors x two prompts
    assert sum(r["random"] for r in rows) == 8
    assert all(r["unsteered"] and r["prompt"] in PROMPTS for r in rows)


def test_scores_and_behaviours_are_stored(client: TestClient, scored: dict[str, Any]) -> None:
    with client.app.state.service.db.session() as session:
        gens = session.scalars(
            select(Generation).where(Generation.id.in_([r["generation_id"] for r in scored["rows"]]))
        ).all()
        assert all(
            g.effect is not None and g.fluency is not None and g.behaviour_id is not None for g in gens
        )
        assert all(g.embedding is not None and len(g.embedding) == 384 * 4 for g in gens)
        # Random-twin completions are the baseline: their percentiles spread around the middle.
        learned = [
            g for g in gens if not next(r for r in scored["rows"] if r["generation_id"] == g.id)["random"]
        ]
        assert all(g.beyond_random is not None and 0 <= g.beyond_random <= 100 for g in learned)
        behaviours = session.scalars(select(Behaviour).where(Behaviour.run_id == scored["run"])).all()
        assert sum(b.size for b in behaviours) == len(gens)
        assert sum(b.n_random for b in behaviours) >= 4
        vectors = session.scalars(select(Vector).where(Vector.run_id == scored["run"])).all()
        assert sorted(v.rank for v in vectors if v.rank is not None) == [0, 1, 2, 3]
        assert all(v.interest is not None and v.behaviour_id is not None for v in vectors)
        run = session.get(Run, scored["run"])
        assert run is not None and len(run.result["discovery"]["learned"]) == 4
        assert len(run.result["discovery"]["random"]) == 4


def test_behaviours_page_api_and_curve(client: TestClient, scored: dict[str, Any]) -> None:
    run = scored["run"]
    page = soup(client.get(f"/runs/{run}/behaviours"))
    rows = page.select("tr.behaviour-row")
    api = client.get(f"/api/runs/{run}/behaviours").json()
    assert len(rows) == len(api) >= 1
    assert [r.select_one(".behaviour-name").get_text() for r in rows] == [b["name"] for b in api]
    assert all(b["exemplar"]["text"] is not None for b in api)
    curve = client.get(f"/api/runs/{run}/discovery").json()
    assert len(curve["learned"]) == 4 and curve["learned"] == sorted(curve["learned"])
    show = soup(client.get(f"/runs/{run}"))
    assert show.find(id="discovery") is not None and show.find(id="behaviours-link") is not None
    assert show.find(id="twin").find("a")["href"] == f"/runs/{scored['twin']}"
    points = client.get(f"/runs/{run}/map.json").json()["points"]
    assert all(p["behaviour"] and p["behaviour_colour"] for p in points)


def test_gallery_interesting_first_grouped_and_filtered(client: TestClient, scored: dict[str, Any]) -> None:
    run = scored["run"]
    with client.app.state.service.db.session() as session:
        by_rank = [
            v.id
            for v in session.scalars(select(Vector).where(Vector.run_id == run).order_by(Vector.rank)).all()
        ]
        first_behaviour = session.scalars(select(Behaviour).where(Behaviour.run_id == run)).first()
        assert first_behaviour is not None
        members = set(
            session.scalars(
                select(Generation.vector_id).where(Generation.behaviour_id == first_behaviour.id)
            ).all()
        )
    cards = soup(client.get(f"/runs/{run}/gallery")).select("article.card")
    assert [int(c["id"].removeprefix("card-")) for c in cards] == by_rank  # the default order
    assert all(c.select_one(".interest") is not None for c in cards)
    assert cards[0].select_one(".scores") is not None  # effect, beyond random, fluency
    grouped = soup(client.get(f"/runs/{run}/gallery", params={"group": "true"}))
    assert grouped.select("h3.behaviour-group")
    only = soup(client.get(f"/runs/{run}/gallery", params={"behaviour": first_behaviour.id}))
    ids = {int(c["id"].removeprefix("card-")) for c in only.select("article.card")}
    assert ids == members & set(by_rank)


def test_label_a_behaviour_labels_its_members(client: TestClient, scored: dict[str, Any]) -> None:
    run = scored["run"]
    behaviour = client.get(f"/api/runs/{run}/behaviours").json()[0]
    label = next(x["id"] for x in client.get("/api/labels").json() if x["name"] == "role-play")
    client.cookies.set("steerscope_author", "ada")
    r = client.post(f"/api/behaviours/{behaviour['id']}/label", json={"label_id": label})
    assert r.status_code == 200 and r.json()["vectors"] + r.json()["generations"] >= 1
    facets = {a["data-label"]: a for a in soup(client.get(f"/runs/{run}/gallery")).select(".facet")}
    assert int(facets["role-play"].select_one(".facet-count").get_text()) == r.json()["vectors"]
    assert client.post("/api/behaviours/99999/label", json={"label_id": label}).status_code == 404


def test_exports_carry_scores_and_behaviours(client: TestClient, scored: dict[str, Any]) -> None:
    run = scored["run"]
    rows = list(
        csv.DictReader(io.StringIO(client.get("/api/export/generations.csv", params={"run_id": run}).text))
    )
    steered = [r for r in rows if r["vector_id"]]
    assert steered and all(r["effect"] and r["fluency"] and r["behaviour_id"] for r in steered)
    behaviours = client.get("/api/export/behaviours.jsonl", params={"run_id": run}).text.splitlines()
    assert len(behaviours) == len(client.get(f"/api/runs/{run}/behaviours").json())
    vectors = list(
        csv.DictReader(io.StringIO(client.get("/api/export/vectors.csv", params={"run_id": run}).text))
    )
    assert all(v["rank"] != "" for v in vectors)


def test_queue_offers_the_flag_as_a_suggestion(client: TestClient, scored: dict[str, Any]) -> None:
    run = scored["run"]
    with client.app.state.service.db.session() as session:
        # Make the first vector in the queue plainly unchanged on every prompt.
        first = session.scalars(select(Vector).where(Vector.run_id == run).order_by(Vector.rank)).first()
        assert first is not None
        for g in session.scalars(select(Generation).where(Generation.vector_id == first.id)):
            g.flag = "unchanged"
    client.cookies.set("steerscope_author", "ada")
    page = soup(client.get(f"/runs/{run}/label"))
    suggestion = page.find(id="suggestion")
    assert suggestion is not None and "unchanged" in suggestion.get_text()


def test_regex_detector_column_sort_and_filter(client: TestClient, scored: dict[str, Any]) -> None:
    run = scored["run"]
    r = client.post("/api/detectors", json={"name": "has an e", "kind": "regex", "pattern": "e"})
    assert r.status_code == 201, r.text
    detector = r.json()["id"]
    bad = client.post("/api/detectors", json={"name": "broken", "kind": "regex", "pattern": "(unclosed"})
    assert bad.status_code == 422 and "regular expression" in bad.json()["detail"]
    assert client.post("/api/detectors", json={"name": "has an e", "pattern": "x"}).status_code == 422
    done = client.post(f"/api/detectors/{detector}/runs/{run}")
    assert done.status_code == 200 and done.json()["scored"] == 8
    page = soup(client.get(f"/runs/{run}/gallery", params={"detector": detector, "sort": "detector"}))
    scores = [float(c.select_one(".detected").get_text().split()[-1]) for c in page.select("article.card")]
    assert scores == sorted(scores, reverse=True)
    hits = soup(client.get(f"/runs/{run}/gallery", params={"detector": detector, "min_detector": "0.5"}))
    assert len(hits.select("article.card")) == sum(s >= 0.5 for s in scores)
    assert soup(client.get("/detectors")).select("tr.detector")


def test_judge_detector_runs_on_the_worker(client: TestClient, scored: dict[str, Any]) -> None:
    run = scored["run"]
    r = client.post(
        "/api/detectors", json={"name": "a story?", "kind": "judge", "pattern": "Is this text a story?"}
    )
    assert r.status_code == 201, r.text
    detector = r.json()["id"]
    started = client.post(f"/api/detectors/{detector}/runs/{run}")
    assert started.status_code == 200, started.text
    assert wait_job(client, started.json()["job"]["id"])["status"] == "succeeded"
    with client.app.state.service.db.session() as session:
        from app.models import DetectorScore

        scores = session.scalars(select(DetectorScore).where(DetectorScore.detector_id == detector)).all()
        assert len(scores) == 8 and all(0.0 <= s.score <= 1.0 for s in scores)
    # A judge the worker cannot load is refused before anything is queued.
    broken = client.post(
        "/api/detectors",
        json={"name": "nowhere", "kind": "judge", "pattern": "Yes?", "judge_model": "/no/such"},
    ).json()["id"]
    before = row_counts(client)
    refused = client.post(f"/api/detectors/{broken}/runs/{run}")
    assert 400 <= refused.status_code < 500, refused.text
    assert row_counts(client) == before
