"""Discovery yield in the app: the calibrated default R, each vector seen at its working scale, typed
trait changes and behaviour subtitles stored and shown, the engine's interesting-first order, and
a run page that follows its run until the scores are in."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Generator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient
from sqlalchemy import select

from app import store
from app.discovery import findings
from app.executor import gallery as gallery_unit
from app.executor.codec import to_bytes
from app.executor.job import Job as WorkerJob
from app.executor.protocol import FromWorker, Generations, Order, WorkingScales
from app.executor.tasks.score import with_directions
from app.models import Generation, Job, LanguageModel, Run, Vector, now
from app.settings import Settings
from engine import LoadedModel
from engine.discovery.ranking import interesting_first
from engine.discovery.traits import differences
from engine.refine.working_scale import LADDER, WorkingScale, scored_scale
from tests.app.conftest import make_settings, wait_job
from tests.app.helpers import score_run

PROMPTS = ["Tell me a story.", "What is two plus two?"]


@pytest.fixture(scope="module")
def shared_settings(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Settings:
    return make_settings(tmp_path_factory.mktemp("yield") / "data", tiny_dir, auto_score=True)


def soup(response: Any) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def start(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/api/runs", json={"prompts": PROMPTS, "n_vectors": 3, "steps": 3, **body})
    assert r.status_code == 201, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    return dict(r.json())


@pytest.fixture(scope="module")
def pair(client: TestClient) -> dict[str, int]:
    """A default MELBO run (no R given) with its random twin, both finished and scored."""
    learned = start(client, twin=True)["run_id"]
    service = client.app.state.service
    with service.db.session() as session:
        twin_run = session.scalars(select(Run).where(Run.twin_of == learned)).one()
        twin, twin_job = twin_run.id, session.scalars(select(Job).where(Job.run_id == twin_run.id)).one().id
    assert wait_job(client, twin_job)["status"] == "succeeded"
    score_run(service, learned)
    return {"run": learned, "twin": twin}


# 1. The default R is the calibrated one.


def test_the_default_r_is_the_calibrated_share_shared_by_the_twin_and_cached(
    client: TestClient, pair: dict[str, int]
) -> None:
    with client.app.state.service.db.session() as session:
        learned, twin = session.get(Run, pair["run"]), session.get(Run, pair["twin"])
        assert learned is not None and twin is not None and learned.radius is not None
        share = learned.result["default_share"]
        assert (share["source"], share["target"], share["positions"]) == (
            learned.source,
            learned.target,
            "last:3",
        )
        assert learned.radius == pytest.approx(share["share"] * learned.result["residual_norm"], rel=1e-6)
        assert twin.radius == pytest.approx(learned.radius, rel=1e-9)
        assert twin.result["default_share"]["share"] == share["share"]
        # The twin ran in the same worker right after its run: the share came from the cache.
        assert (share["cached"], twin.result["default_share"]["cached"]) == (False, True)
    # A later run of the same model, blocks and positions does not calibrate again, even on other
    # prompts; R follows its own prompts' residual norm.
    later = start(client, prompts=["Name a colour."], n_vectors=1, steps=1)["run_id"]
    with client.app.state.service.db.session() as session:
        run = session.get(Run, later)
        assert run is not None and run.radius is not None
        assert run.result["default_share"]["cached"] is True
        assert run.result["default_share"]["share"] == share["share"]
        assert run.radius == pytest.approx(share["share"] * run.result["residual_norm"], rel=1e-6)
    # Given R, no share is calibrated or shown.
    asked = start(client, radius=2.5, n_vectors=1, steps=1)["run_id"]
    with client.app.state.service.db.session() as session:
        run = session.get(Run, asked)
        assert run is not None and run.radius == 2.5 and "default_share" not in run.result


def test_the_run_page_shows_r_and_the_share_it_came_from(client: TestClient, pair: dict[str, int]) -> None:
    with client.app.state.service.db.session() as session:
        learned = session.get(Run, pair["run"])
        assert learned is not None
        share = learned.result["default_share"]
    for run in (pair["run"], pair["twin"]):
        fact = soup(client.get(f"/runs/{run}")).find("dd", attrs={"data-fact": "R"})
        assert fact is not None
        said = " ".join(fact.get_text().split())
        assert f"{share['share']:.3f}" in said and "× residual norm" in said
        expected = "no calibrated share" if share["fallback"] else "calibrated for this model"
        assert expected in said


# 2. Each vector seen where it acts.


def test_every_vector_and_its_twins_are_probed_and_scored_at_their_working_scale(
    client: TestClient, pair: dict[str, int]
) -> None:
    with client.app.state.service.db.session() as session:
        vectors = session.scalars(select(Vector).where(Vector.run_id.in_(pair.values()))).all()
        assert len(vectors) == 6
        assert all(v.working_scale in LADDER for v in vectors)
        learned = session.get(Run, pair["run"])
        assert learned is not None
        rows = findings.completions(session, learned)
        by_id = {v.id: v for v in vectors}
        assert len(rows) == 6 * len(PROMPTS)
        assert all(r["scale"] == scored_scale(by_id[r["vector_id"]].working_scale) for r in rows)
    events = client.get(f"/api/jobs/{start_job(client, pair['run'])}/events").text
    assert "working_scales" in events


def start_job(client: TestClient, run_id: int) -> int:
    with client.app.state.service.db.session() as session:
        return session.scalars(select(Job.id).where(Job.run_id == run_id)).one()


@pytest.fixture
def tiny_job(tiny: LoadedModel) -> tuple[WorkerJob, list[FromWorker]]:
    sent: list[FromWorker] = []
    gallery = {"prompts": PROMPTS, "max_new_tokens": 3, "batch": 8, "done": [], "probe": True, "working": {}}
    job = WorkerJob(
        Order(job_id=1, attempt=1, kind="melbo", task="melbo", spec={}, gallery=gallery), sent.append
    )
    torch.manual_seed(0)
    job.vectors = [(i, 1, to_bytes(torch.randn(tiny.info.width))) for i in range(2)]
    return job, sent


def run_units(units: Generator[None, None, bool]) -> bool:
    while True:
        try:
            next(units)
        except StopIteration as end:
            return bool(end.value)


def test_the_gallery_samples_a_vector_at_its_working_scale_beside_x1(
    tiny: LoadedModel, tiny_job: tuple[WorkerJob, list[FromWorker]], monkeypatch: pytest.MonkeyPatch
) -> None:
    job, sent = tiny_job

    def probe(lm: LoadedModel, block: int, vectors: torch.Tensor, prompts: Any, **_: Any) -> Any:
        assert block == 1 and vectors.shape[0] == 2 and list(prompts) == PROMPTS
        yield "completions", 1, 1
        return [WorkingScale(2.0, 3.0), WorkingScale(1.0, 1.5)]

    monkeypatch.setattr(gallery_unit, "working_scale_steps", probe)
    assert run_units(gallery_unit.gallery(tiny, job, start=0.9)) is False
    scales = [e for e in sent if isinstance(e, WorkingScales)]
    assert len(scales) == 1 and [(r["index"], r["scale"], r["broken_at"]) for r in scales[0].rows] == [
        (0, 2.0, 3.0),
        (1, 1.0, 1.5),
    ]
    rows = [r for e in sent if isinstance(e, Generations) for r in e.rows]
    got = sorted((r["vector_index"] if r["vector_index"] is not None else -1, r["scale"]) for r in rows)
    # The unsteered model, vector 0 at x1 and x2, vector 1 at x1 only: on each prompt.
    assert got == sorted([(-1, 0.0), (0, 1.0), (0, 2.0), (1, 1.0)] * len(PROMPTS))


def test_a_resumed_gallery_neither_probes_again_nor_samples_twice(
    tiny: LoadedModel, tiny_job: tuple[WorkerJob, list[FromWorker]], monkeypatch: pytest.MonkeyPatch
) -> None:
    job, sent = tiny_job
    job.order.gallery.update(working={0: 2.0, 1: 1.0}, done=[[None, 0, 0.0], [0, 0, 1.0], [0, 1, 2.0]])

    def probe(*_: Any, **__: Any) -> Any:
        raise AssertionError("scales found by an earlier attempt are not probed again")

    monkeypatch.setattr(gallery_unit, "working_scale_steps", probe)
    assert run_units(gallery_unit.gallery(tiny, job, start=0.9)) is False
    assert not [e for e in sent if isinstance(e, WorkingScales)]
    rows = [r for e in sent if isinstance(e, Generations) for r in e.rows]
    got = sorted(
        (r["vector_index"] if r["vector_index"] is not None else -1, r["prompt"], r["scale"]) for r in rows
    )
    assert got == sorted(
        [
            (-1, PROMPTS[1], 0.0),
            (0, PROMPTS[1], 1.0),
            (0, PROMPTS[0], 2.0),
            (1, PROMPTS[0], 1.0),
            (1, PROMPTS[1], 1.0),
        ]
    )


def test_the_real_probe_runs_in_units_and_keeps_a_scale_of_the_ladder(
    tiny: LoadedModel, tiny_job: tuple[WorkerJob, list[FromWorker]]
) -> None:
    job, _ = tiny_job
    units = gallery_unit.working_scales(tiny, job, start=0.9)
    steps = 0
    while True:
        try:
            next(units)
            steps += 1
        except StopIteration as end:
            found = end.value
            break
    assert steps > 1  # one decode step or fluency batch per unit, not the whole probe at once
    assert set(found) == {0, 1} and set(found.values()) <= set(LADDER)


def with_working_scale(
    client: TestClient, run_id: int, scale: float, index: int = 0
) -> tuple[int, list[int]]:
    """Give one of the run's vectors a working scale and its gallery samples there (as a probe that
    found it would have): its id and the new generations' ids."""
    with client.app.state.service.db.session() as session:
        run = session.get(Run, run_id)
        assert run is not None
        model = session.get(LanguageModel, run.model_id)
        vector = session.scalars(select(Vector).where(Vector.run_id == run_id, Vector.index == index)).one()
        vector.working_scale, vector.broken_at = scale, 3.0
        made = []
        for prompt in PROMPTS:
            row = {
                "vector_id": vector.id,
                "scale": scale,
                "block": vector.block,
                "prompt": prompt,
                "seed": 0,
                "temperature": 0.0,
                "top_p": 1.0,
                "max_new_tokens": client.app.state.service.settings.gallery_tokens,
                "text": f"<b>at x{scale}</b> on {prompt}",
                "n_tokens": 3,
                "finish_reason": "length",
            }
            assert model is not None
            made.append(store.add_generation(session, model, row).id)
        return vector.id, made


def test_the_gallery_shows_the_working_scale_beside_x1_and_scoring_reads_it_below_x1(
    client: TestClient,
) -> None:
    run = quiet_run(client)
    cards = soup(client.get(f"/runs/{run}/gallery")).select("article.card")
    assert cards and not [c for c in cards if c.select(".working-scale")]  # x1 only: one column
    vector_id, made = with_working_scale(client, run, 2.0)
    page = client.get(f"/runs/{run}/gallery")
    assert "<b>at x2.0</b>" not in page.text  # model output is escaped
    card = soup(page).find(id=f"card-{vector_id}")
    working = card.select(".working-scale")
    assert len(working) == len(PROMPTS) and all(w["data-scale"] == "2.0" for w in working)
    assert "at x2.0" in working[0].get_text() and "×2" in working[0].find("h4").get_text()
    assert "working scale ×2" in card.select_one(".metrics").get_text()
    # A second vector that writes fluently only below x1 is scored there; the first, above x1, at x1.
    lower_id, lower = with_working_scale(client, run, 0.75, index=1)
    with client.app.state.service.db.session() as session:
        learned = session.get(Run, run)
        assert learned is not None
        rows = findings.completions(session, learned)
        assert all(r["scale"] == 1.0 for r in rows if r["vector_id"] != lower_id)
        assert sorted(r["generation_id"] for r in rows if r["vector_id"] == lower_id) == sorted(lower)
        assert not {r["generation_id"] for r in rows} & set(made)
        # The run owes its samples at the working scales too.
        tokens = client.app.state.service.settings.gallery_tokens
        done = store.gallery_done(session, learned, learned.prompts, tokens)
        assert sorted(d[2] for d in done if d[0] == 0) == [1.0, 1.0, 2.0, 2.0]
        assert sorted(d[2] for d in done if d[0] == 1) == [0.75, 0.75, 1.0, 1.0]
    card = soup(client.get(f"/runs/{run}/gallery")).find(id=f"card-{lower_id}")
    assert [w["data-scale"] for w in card.select(".working-scale")] == ["0.75"] * len(PROMPTS)
    # The labelling queue labels (and shows) the completion scoring read.
    client.cookies.set("steerscope_author", "ada")
    queue = soup(client.get(f"/runs/{run}/label", params={"sort": "index"}))
    # (the queue's first vector: the one at x2, read at x1)
    labelled = [int(x["data-generation"]) for x in queue.select("select.generation-label")]
    assert len(labelled) == len(PROMPTS) and not set(labelled) & set(made)
    assert all("×1" in h.get_text() for h in queue.select(".sample .steered h4"))
    shown = soup(client.get(f"/vectors/{vector_id}")).find(id="working-scale")
    assert shown is not None and "×2" in shown.get_text() and "broke at ×3" in shown.get_text()
    vector = client.get(f"/api/vectors/{vector_id}").json()
    assert (vector["working_scale"], vector["broken_at"]) == (2.0, 3.0)


# 3. Flags and names shown.


def test_trait_changes_get_their_direction_in_the_worker() -> None:
    refusal, story = (
        "I'm sorry, but I can't help with that request.",
        "Once upon a time a fox lived in a wood.",
    )
    assert differences(refusal, story) == ["refusal"]
    rows = [{"text": refusal, "unsteered": story}, {"text": story, "unsteered": refusal}]
    found = {"scores": [{"changes": differences(r["text"], r["unsteered"])} for r in rows]}
    with_directions(found, rows)
    assert [s["changes"] for s in found["scores"]] == [
        [{"trait": "refusal", "now": True}],
        [{"trait": "refusal", "now": False}],
    ]


def quiet_run(client: TestClient) -> int:
    """A finished run whose own scoring (queued by itself on this server) has ended too, so what a
    test stores is not replaced behind its back."""
    run = int(start(client)["run_id"])
    score_run(client.app.state.service, run)
    return run


def crafted(session: Any, run: Run) -> dict[str, Any]:
    """Findings as the worker sends them for this run: vector 0 refuses (interest 0.6), vector 1 is
    gibberish alone in its group (interest 0), vector 2 rephrases (interest 0.2); ranked by the
    engine's own order."""
    vectors = {v.index: v for v in session.scalars(select(Vector).where(Vector.run_id == run.id))}
    gens = {
        (g.vector_id, g.prompt): g
        for g in session.scalars(
            select(Generation).where(Generation.vector_id.in_([v.id for v in vectors.values()]))
        )
    }
    interest = {vectors[0].id: 0.6, vectors[1].id: 0.0, vectors[2].id: 0.2}
    behaviour = {vectors[0].id: 0, vectors[1].id: 1, vectors[2].id: 2}
    order = interesting_first(interest, behaviour)
    scores = []
    for index, v in vectors.items():
        for prompt in PROMPTS:
            changes = [{"trait": "refusal", "now": True}] if index == 0 else []
            flag = {0: "", 1: "gibberish", 2: "rephrase"}[index]
            scores.append(
                {
                    "generation_id": gens[(v.id, prompt)].id,
                    "effect": 0.5,
                    "fluency": -2.0,
                    "repetition": 0.0,
                    "beyond_random": 90.0,
                    "interest": interest[v.id],
                    "flag": flag,
                    "changes": changes,
                    "behaviour": behaviour[v.id],
                }
            )
    names = [("refuses", "sorry · help · cannot", "refuses"), ("gibberish", "", ""), ("rephrase", "", "")]
    return {
        "scores": scores,
        "behaviours": [
            {
                "index": i,
                "kind": "cluster" if i == 0 else names[i][0],
                "name": name,
                "words": subtitle.split(" · ") if subtitle else [],
                "subtitle": subtitle,
                "trait": trait,
                "exemplar": scores[2 * i]["generation_id"],
                "size": 2,
                "n_vectors": 1,
                "n_random": 0,
            }
            for i, (name, subtitle, trait) in enumerate(names)
        ],
        "vectors": [
            {"vector_id": v, "interest": interest[v], "behaviour": behaviour[v], "rank": order.index(v)}
            for v in interest
        ],
        "curve": {"learned": [1, 2, 3], "random": []},
    }


def test_flags_names_and_subtitles_are_stored_and_shown(client: TestClient) -> None:
    run = quiet_run(client)
    with client.app.state.service.db.session() as session:
        learned = session.get(Run, run)
        assert learned is not None
        findings.store(session, learned, crafted(session, learned))
        first = session.scalars(select(Vector).where(Vector.run_id == run, Vector.index == 0)).one().id
    card = soup(client.get(f"/runs/{run}/gallery")).find(id=f"card-{first}")
    assert [c.get_text() for c in card.select(".changes")] == ["changed: now refuses"] * len(PROMPTS)
    assert card.select_one("a.behaviour").get_text() == "refuses"
    assert card.select_one("a.behaviour")["title"] == "sorry · help · cannot"
    grouped = soup(client.get(f"/runs/{run}/gallery", params={"group": "true"}))
    heading = grouped.select("h3.behaviour-group")[0]
    assert "refuses" in heading.get_text() and heading.select_one(".behaviour-subtitle").get_text() == (
        "sorry · help · cannot"
    )
    page = soup(client.get(f"/runs/{run}/behaviours"))
    row = page.select("tr.behaviour-row")[0]
    assert row.select_one(".behaviour-name").get_text() == "refuses"
    assert row.select_one(".behaviour-subtitle").get_text() == "sorry · help · cannot"
    api = client.get(f"/api/runs/{run}/behaviours").json()
    assert (api[0]["name"], api[0]["subtitle"], api[0]["trait"]) == (
        "refuses",
        "sorry · help · cannot",
        "refuses",
    )
    exported = csv.DictReader(
        io.StringIO(client.get("/api/export/generations.csv", params={"run_id": run}).text)
    )
    assert [json.loads(r["changes"]) for r in exported if r["vector_id"] == str(first)] == [
        [{"trait": "refusal", "now": True}]
    ] * len(PROMPTS)
    generations = client.get("/api/generations", params={"vector_id": first}).json()
    scored = [g for g in generations if g["changes"]]
    assert scored and all(g["changes"] == [{"trait": "refusal", "now": True}] for g in scored)


def test_interest_0_never_comes_first_in_the_gallery(client: TestClient) -> None:
    """The gallery's interesting-first order is the engine's: a vector of interest 0 comes after
    every vector of interest above 0, even as the only member (the exemplar) of its behaviour."""
    run = quiet_run(client)
    with client.app.state.service.db.session() as session:
        learned = session.get(Run, run)
        assert learned is not None
        findings.store(session, learned, crafted(session, learned))
        by_index = {v.index: v.id for v in session.scalars(select(Vector).where(Vector.run_id == run))}
    cards = soup(client.get(f"/runs/{run}/gallery")).select("article.card")
    assert [int(c["id"].removeprefix("card-")) for c in cards] == [by_index[0], by_index[2], by_index[1]]


# 4. The run page follows its run until the scores are in.


def test_a_run_page_follows_the_moment_before_its_scoring_is_queued(
    client: TestClient, pair: dict[str, int]
) -> None:
    """The recorder queues a run's scoring in a transaction of its own just after it stores the end
    of the run's last job. A page read in that moment keeps following the run (no "Score now"); a
    page read long after an end that queued nothing rests."""
    service = client.app.state.service
    run_id = pair["run"]

    def ended(minutes_ago: dict[int, float]) -> None:
        with service.db.session() as session:
            for job_run, minutes in minutes_ago.items():
                job = session.scalars(select(Job).where(Job.run_id == job_run)).one()
                job.finished_at = now() - timedelta(minutes=minutes)

    with service.db.session() as session:
        run = session.get(Run, run_id)
        assert run is not None and "discovery" in run.result
        kept = dict(run.result)
        run.result = {k: v for k, v in kept.items() if k != "discovery"}  # as before its scoring
    try:
        ended({run_id: 5, pair["twin"]: 0})  # the twin, the run's last job, has just ended
        page = soup(client.get(f"/runs/{run_id}"))
        assert page.select_one("#run-body[data-live]") is not None
        assert page.select_one("#scoring") is None  # no "Score now" while it is being queued
        ended({run_id: 6, pair["twin"]: 5})
        page = soup(client.get(f"/runs/{run_id}"))
        assert page.select_one("#run-body[data-live]") is None
        assert "Not scored yet" in page.select_one("#scoring").get_text()
    finally:
        with service.db.session() as session:
            session.get(Run, run_id).result = kept
