"""The pages, rendered by a live server on the tiny model and parsed (not grepped)."""

from __future__ import annotations

import re
from typing import Any

from bs4 import BeautifulSoup
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.models import Job, Run
from app.runs.pages import phase_ends
from tests.app.conftest import wait_job
from tests.app.helpers import vectors_of

PROMPTS = "Tell me a story.\nWhat is two plus two?"


def soup(response: Any) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def form(**change: str) -> dict[str, str]:
    values = {
        "prompts": PROMPTS,
        "n_vectors": "3",
        "steps": "10",
        "orthogonal": "on",
        "positions": "user",
        "p": "2",
        "seed": "0",
        "method": "melbo",
        "mode": "fast",
    }
    return {**values, **change}


def run_rows(client: TestClient) -> int:
    with client.app.state.service.db.session() as session:
        return (session.scalar(select(func.count()).select_from(Run)) or 0) + (
            session.scalar(select(func.count()).select_from(Job)) or 0
        )


def test_bad_form_shows_errors_next_to_fields_and_queues_nothing(client: TestClient) -> None:
    before = run_rows(client)
    r = client.post("/runs/new", data=form(source="99"))
    assert r.status_code == 422
    assert "source block 99 is out of range" in soup(r).find(id="error-source").get_text()
    r = client.post("/runs/new", data=form(radius="abc"))
    assert r.status_code == 422 and soup(r).find(id="error-radius") is not None
    assert soup(r).find(id="radius")["value"] == "abc"  # what the user typed stays in the field
    r = client.post("/runs/new", data=form(prompts=""))
    assert "give at least one prompt" in soup(r).find(id="error-prompts").get_text()
    assert run_rows(client) == before


def test_form_run_gallery_vector_compare_and_chain_pages(client: TestClient) -> None:
    r = client.post("/runs/new", data=form(), follow_redirects=False)
    assert r.status_code == 303, r.text
    run_id = int(r.headers["location"].rsplit("/", 1)[1])
    job = client.get("/api/jobs", params={"limit": 1}).json()[0]
    assert wait_job(client, job["id"])["status"] == "succeeded"

    page = soup(client.get(f"/runs/{run_id}"))
    assert page.find(id="job-progress")["data-status"] == "succeeded"
    blank = client.get(f"/runs/{run_id}/gallery", params={"min_kl": "", "min_objective": "", "label": ""})
    assert blank.status_code == 200 and len(soup(blank).select("article.card")) == 3  # blank filters: none
    gallery = soup(client.get(f"/runs/{run_id}/gallery", params={"sort": "kl", "desc": "true"}))
    cards = gallery.select("article.card")
    assert len(cards) == 3 and all(len(c.select(".sample")) == 2 for c in cards)
    kls = [float(c.select_one(".metrics").get_text().split("KL ")[1].split(" ")[0]) for c in cards]
    assert kls == sorted(kls, reverse=True)
    view = client.get(f"/runs/{run_id}/map.json").json()
    assert len(view["points"]) == 3 and {"x", "y", "id", "index"} <= set(view["points"][0])
    assert [a.split(" (")[0] for a in view["axes"]] == ["principal component 1", "principal component 2"]

    vectors = vectors_of(client, run_id)
    vector = soup(client.get(f"/vectors/{vectors[0]['id']}"))
    assert vector.find(id="custom-form") is not None and len(vector.select("table.scales tr")) == 3
    custom = soup(
        client.post(
            f"/vectors/{vectors[0]['id']}/generate",
            data={"prompt": "hello", "scale": "2", "max_new_tokens": "4"},
        )
    )
    assert custom.find(id="custom-steered") is not None and "× 2.0" in custom.get_text()

    compare = soup(client.get("/compare", params={"ids": f"{vectors[0]['id']},{vectors[1]['id']}"}))
    assert len(compare.select(".compare-cell")) == 3  # unsteered + two vectors
    assert len(compare.select("table.heatmap tr")) == 3
    heat = soup(
        client.post(
            "/compare/downstream", data={"ids": f"{vectors[0]['id']},{vectors[1]['id']}", "prompt": "hi"}
        )
    )
    diagonal = [row.select("td")[i].get_text() for i, row in enumerate(heat.select("tr")[1:])]
    assert diagonal == ["1.00", "1.00"]

    r = client.post(f"/vectors/{vectors[0]['id']}/chain", data={"n_vectors": "2", "steps": "5"})
    chain_id = int(r.headers["HX-Redirect"].rsplit("/", 1)[1])
    job = client.get("/api/jobs", params={"limit": 1}).json()[0]
    assert wait_job(client, job["id"])["status"] == "succeeded"
    series = client.get(f"/runs/{chain_id}/chain.json").json()
    assert series["index"] == [0, 1] and all(n > 0 for n in series["norm"])
    assert soup(client.get(f"/runs/{chain_id}")).find(id="chain-plot") is not None


def test_missing_things_get_an_html_404(client: TestClient) -> None:
    r = client.get("/runs/999999")
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    assert "no run 999999" in soup(r).get_text()
    assert client.get("/compare", params={"ids": "1"}).status_code == 422


def test_number_fields_answer_in_words_and_keep_every_fields_error(client: TestClient) -> None:
    before = run_rows(client)
    r = client.post("/runs/new", data=form(n_vectors="eight", source="99", radius="-1", p="x"))
    assert r.status_code == 422
    page = soup(r)
    assert page.find(id="error-n_vectors").get_text() == "vectors must be a whole number, got 'eight'"
    assert page.find(id="error-p").get_text() == "p must be a number, got 'x'"
    assert "source block 99 is out of range" in page.find(id="error-source").get_text()
    assert "R (radius) must be a finite number > 0" in page.find(id="error-radius").get_text()
    assert "Input should" not in page.get_text() and "parse" not in page.get_text()
    assert run_rows(client) == before


def test_the_gallery_view_lives_in_the_url(client: TestClient) -> None:
    r = client.post("/api/runs", json={"prompts": ["Hi."], "n_vectors": 3, "method": "random", "radius": 4.0})
    run_id = r.json()["run_id"]
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    ids = [v["id"] for v in vectors_of(client, run_id)]
    view = {"sort": "norm", "desc": "true", "min_kl": "0", "q": "", "pick": [str(ids[2]), str(ids[0])]}
    partial = client.get(f"/runs/{run_id}/gallery", params=view, headers={"HX-Request": "true"})
    assert (
        partial.headers["HX-Push-Url"]
        == f"/runs/{run_id}?sort=norm&desc=1&min_kl=0.0&pick={ids[2]}&pick={ids[0]}"
    )

    page = soup(client.get(partial.headers["HX-Push-Url"]))  # the pushed address renders the same view
    assert page.select_one("#gallery select[name=sort] option[selected]")["value"] == "norm"
    assert page.select_one("#gallery input[name=desc]").has_attr("checked")
    ticked = sorted(int(box["value"]) for box in page.select("article.card input[name=pick][checked]"))
    assert ticked == sorted([ids[0], ids[2]])
    assert (
        page.find(id="compare-selected")["href"]
        == f"/compare?ids={min(ids[0], ids[2])},{max(ids[0], ids[2])}"
    )
    assert page.find(id="run-body").get("sse-connect") is None  # finished: no stream

    redirect = client.get(
        "/compare", params={"pick": [ids[1], ids[0]], "prompt": "Hi."}, follow_redirects=False
    )
    assert redirect.status_code == 303
    assert redirect.headers["location"] == f"/compare?ids={ids[1]},{ids[0]}&prompt=Hi."

    stream = client.get(f"/runs/{run_id}/live")  # a late stream says "finished" at once and ends
    assert re.findall(r"^event: (\w+)", stream.text, re.M) == ["progress", "summary", "finished"]


def test_a_filter_that_is_not_a_number_is_said_in_words(client: TestClient) -> None:
    r = client.post("/api/runs", json={"prompts": ["Hi."], "n_vectors": 2, "method": "random", "radius": 4.0})
    run_id = r.json()["run_id"]
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    page = soup(client.get(f"/runs/{run_id}/gallery", params={"min_kl": "abc", "min_objective": "inf"}))
    problems = page.find(id="gallery-problems").get_text()
    assert "KL ≥: 'abc' is not a number" in problems and "objective ≥: 'inf' is not a number" in problems
    assert len(page.select("article.card")) == 2  # the filter is left out, as the message says
    assert (
        soup(client.get(f"/runs/{run_id}/gallery", params={"min_kl": "0"})).find(id="gallery-problems")
        is None
    )


def test_calibrate_r_on_the_form_reads_where_the_run_will(client: TestClient) -> None:
    """With positions left blank, the form's Calibrate R calibrates at MELBO's own default positions
    for a MELBO or random run (the run will read them), at the calibration's default otherwise."""
    service = client.app.state.service

    def calibrated_at(method: str, positions: str) -> str:
        answer = client.post("/runs/calibrate", data=form(method=method, positions=positions))
        assert answer.status_code == 200, answer.text
        with service.db.session() as session:
            run = session.scalars(select(Run).where(Run.kind == "calibrate").order_by(Run.id.desc())).first()
            assert run is not None
            return str(run.spec["positions"])

    for method, expected in (("melbo", "last:3"), ("random", "last:3"), ("dct", "user")):
        assert calibrated_at(method, "") == expected, method
    assert calibrated_at("melbo", "prompt") == "prompt"


def test_a_live_stream_names_each_phase_its_job_passed_through() -> None:
    """Progress events that piled up while the server was busy: the page is sent the last of each
    phase in order (the progress bar and message as they were then), so a short phase is never
    skipped."""
    sent = [
        {"type": "progress", "phase": "training", "progress": 0.4, "message": "step 4"},
        {"type": "vectors", "vectors": []},
        {"type": "progress", "phase": "training", "progress": 0.5, "message": "step 5"},
        {"type": "progress", "phase": "samples", "progress": 0.9, "message": "gallery 1/2"},
        {"type": "progress", "phase": "samples", "progress": 0.95, "message": "gallery 2/2"},
        {"type": "progress", "message": "no phase"},
        {"type": "progress", "phase": "training", "progress": 0.2, "message": "again"},
    ]
    ends = phase_ends(sent)
    assert [(r["phase"], r["message"]) for r in ends] == [
        ("training", "step 5"),
        ("samples", "gallery 2/2"),
        ("training", "again"),
    ]
    assert phase_ends([]) == [] and phase_ends([{"type": "finished"}]) == []


def test_a_phase_already_left_is_shown_as_it_was_reported(client: TestClient) -> None:
    r = client.post("/api/runs", json={"prompts": ["Hi."], "n_vectors": 1, "method": "random", "radius": 4.0})
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    said = {"type": "progress", "phase": "samples", "progress": 0.9, "message": "gallery 1 of 2"}
    with client.app.state.service.db.session() as session:
        run = session.get(Run, r.json()["run_id"])
        job = session.get(Job, r.json()["job"]["id"])
        template = client.app.state.templates.get_template("runs/_progress.html")
        html = template.render(run=run, job=job, live=True, report=said, said=said)
        finished = template.render(run=run, job=job, live=False, report={})
        probe = {**said, "phase": "probe"}
        probing = template.render(run=run, job=job, live=True, report=probe, said=probe)
    box = BeautifulSoup(html, "html.parser").find(id="job-progress")
    assert box["data-phase"] == "samples" and box["data-status"] == "running"
    assert box.select_one(".phase").get_text() == "gallery"
    assert box.select_one(".message").get_text() == "gallery 1 of 2"
    assert box.select_one("progress")["value"] == "0.9"
    label = BeautifulSoup(probing, "html.parser").select_one("#job-progress .phase").get_text()
    assert label == "finding working scales"  # the gallery's probe, said in words
    now = BeautifulSoup(finished, "html.parser").find(id="job-progress")
    assert now["data-status"] == "succeeded" and now.get("data-phase") is None
