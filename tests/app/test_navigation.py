"""Finding one's way: the home page for a newcomer, runs grouped by kind, jobs with their times, a
404 page with a way back, a vector page that fills itself and looks beyond its own run."""

from __future__ import annotations

from typing import Any

from bs4 import BeautifulSoup
from fastapi.testclient import TestClient

from tests.app.conftest import wait_job
from tests.app.helpers import vectors_of


def soup(response: Any) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def run(client: TestClient, **body: Any) -> int:
    r = client.post("/api/runs", json={"prompts": ["Hi."], "n_vectors": 2, "steps": 5, **body})
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    return int(r.json()["run_id"])


def test_home_says_where_to_start_then_groups_runs_by_kind(client: TestClient) -> None:
    home = soup(client.get("/"))
    start = home.find(id="start-here")
    assert start.find("details").has_attr("open")  # nothing trained yet: the first thing shown
    first = home.find(id="first-run")
    fields = {i["name"]: i.get("value") for i in first.select("input[type=hidden]")}
    assert fields["n_vectors"] == "8" and fields["orthogonal"] == "on" and fields["method"] == "melbo"
    assert first.find("textarea", attrs={"name": "prompts"}).get_text().strip()

    learned, baseline = run(client), run(client, method="random")
    client.post("/api/calibrations", json={"prompts": ["Hi."]})
    home = soup(client.get("/"))
    assert not home.find(id="start-here").find("details").has_attr("open")
    groups = {g["data-kind"]: g for g in home.select("section.run-group")}
    assert list(groups) == ["melbo", "random"]
    assert groups["melbo"].find("h2").get_text(" ", strip=True).endswith("1")
    row = groups["random"].select("table.runs tr")[1]
    assert row.find("a")["href"] == f"/runs/{baseline}" and row.select_one("td.vectors").get_text() == "2"
    assert "calibrations" in home.find(id="bookkeeping").get_text()
    listed = soup(client.get("/runs", params={"kind": "melbo"}))
    assert [a["href"] for a in listed.select("table.runs td:first-child a")] == [f"/runs/{learned}"]


def test_jobs_say_when_they_ran_and_for_how_long(client: TestClient) -> None:
    run(client)
    row = soup(client.get("/jobs")).select("tr.job.succeeded")[0]
    assert row.select_one("td.created").get_text().startswith("20")
    assert row.select_one("td.ran").get_text().startswith("took ")
    assert row.select_one("td.waited").get_text().endswith("s")


def test_a_missing_page_says_so_and_shows_the_way_back(client: TestClient) -> None:
    for path in ("/runs/999999", "/vectors/999999", "/no/such/page"):
        r = client.get(path)
        assert r.status_code == 404 and "text/html" in r.headers["content-type"], path
        links = [a["href"] for a in soup(r).find(id="way-back").find_all("a")]
        assert "/" in links and "/runs" in links
    assert "there is no page at /no/such/page" in soup(client.get("/no/such/page")).get_text()
    assert client.get("/api/no/such").json() == {"detail": "Not Found"}


def test_a_page_address_with_a_bad_part_is_a_page_that_says_which(client: TestClient) -> None:
    r = client.get("/runs/abc")
    assert r.status_code == 422 and "text/html" in r.headers["content-type"]
    assert "run_id: must be a whole number, got 'abc'" in soup(r).find("p", class_="error").get_text()
    assert "/runs" in [a["href"] for a in soup(r).find(id="way-back").find_all("a")]
    api = client.get("/api/runs/abc")  # the API still answers JSON
    assert api.status_code == 422 and "run_id: must be a whole number" in api.json()["detail"]


def test_a_vector_page_fills_its_scales_and_looks_beyond_its_run(client: TestClient) -> None:
    first, other = run(client), run(client, seed=1)
    mine, theirs = vectors_of(client, first), vectors_of(client, other)
    page = soup(client.get(f"/vectors/{mine[0]['id']}"))
    scales = page.find(id="scales")
    assert scales["hx-trigger"] == "load" and scales["hx-post"] == f"/vectors/{mine[0]['id']}/scales"
    near = [a["href"] for a in page.select("table.neighbours td:first-child a")]
    assert {f"/vectors/{v['id']}" for v in theirs} <= set(near)
    assert not {f"/vectors/{v['id']}" for v in mine} & set(near)  # not its orthogonal siblings

    started = soup(client.post(f"/vectors/{mine[0]['id']}/scales"))
    assert started.find(id="scales")["hx-trigger"] == "every 1s"
    job = client.get("/api/jobs", params={"limit": 1}).json()[0]
    assert wait_job(client, job["id"])["status"] == "succeeded"
    done = soup(client.get(f"/vectors/{mine[0]['id']}/scales")).find(id="scales")
    assert not done.has_attr("hx-trigger") and not done.select("td.pending")
