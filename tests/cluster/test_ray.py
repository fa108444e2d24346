"""Scale-out on a real local Ray cluster with two actors and the tiny model: jobs run side by side,
a sweep fills its grid, a killed actor's job finishes elsewhere, a restarted server loses nothing."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bs4 import BeautifulSoup

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import make_settings, wait_for
from tests.app.helpers import max_abs_cos
from tests.app.test_chat import conversation, replies
from tests.live import LiveServer, free_port

pytestmark = pytest.mark.cluster
LONG = {"prompts": ["Tell me a story."], "mode": "reference", "steps": 20000, "n_vectors": 2}


def ray_settings(data: Path, tiny_dir: Path) -> Settings:
    return make_settings(data, tiny_dir, executor="ray", ray_actors=2, ray_cpus_per_actor=1, max_steps=20000)


def actors_up(server: LiveServer, n: int = 2) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        runners: list[dict[str, Any]] = server.app.state.service.executor.runners()
        return runners if sum(r["pid"] is not None for r in runners) >= n else None

    result: list[dict[str, Any]] = wait_for(ready, 180, f"{n} actors")
    return result


@pytest.fixture(scope="module")
def live(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(
        create_app(ray_settings(tmp_path_factory.mktemp("ray") / "data", tiny_dir)), free_port()
    ) as s:
        actors_up(s)
        yield s


@pytest.fixture(scope="module")
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=120) as client:
        yield client


def job(api: httpx.Client, job_id: int) -> dict[str, Any]:
    result: dict[str, Any] = api.get(f"/api/jobs/{job_id}").json()
    return result


def finished(api: httpx.Client, job_id: int, timeout: float = 300) -> dict[str, Any]:
    done: dict[str, Any] = wait_for(
        lambda: (j := job(api, job_id))["status"] in ("succeeded", "failed", "cancelled") and j,
        timeout,
        "the job",
    )
    return done


def start(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/api/runs", json=body)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


def test_two_jobs_run_at_once_on_different_actors(api: httpx.Client) -> None:
    ids = [start(api, {**LONG, "seed": seed})["job"]["id"] for seed in (1, 2)]
    both = wait_for(lambda: all(job(api, i)["progress"] > 0 for i in ids) and [job(api, i) for i in ids], 180)
    assert both[0]["runner"] and both[1]["runner"] and both[0]["runner"] != both[1]["runner"]
    for i in ids:
        api.post(f"/api/jobs/{i}/cancel")
        assert finished(api, i)["status"] == "cancelled"


def test_a_chat_is_answered_while_another_actor_trains(api: httpx.Client) -> None:
    run = start(api, {"prompts": ["Hello."], "n_vectors": 1, "method": "random", "radius": 8.0})
    assert finished(api, run["job"]["id"])["status"] == "succeeded"
    vector = api.get(f"/api/runs/{run['run_id']}/vectors").json()[0]["id"]
    training = start(api, {**LONG, "seed": 3})["job"]["id"]
    wait_for(lambda: job(api, training)["progress"] > 0, 180, "training to start")
    cid = conversation(api, vector, max_new_tokens=16, temperature=0.8, seed=2)
    assert (
        api.post(f"/api/conversations/{cid}/messages", json={"content": "Tell me a joke."}).status_code == 202
    )
    answered = replies(api, cid)
    assert all(m["finish_reason"] in ("eos", "length") and m["content"] for m in answered.values())
    assert job(api, training)["status"] == "running"
    api.post(f"/api/jobs/{training}/cancel")
    finished(api, training)


def test_a_sweep_of_four_cells_fills_its_grid(api: httpx.Client) -> None:
    body = {"prompt_sets": [["Hi."], ["Tell me a story."]], "radii": [0.05, 0.1], "n_vectors": 2, "steps": 10}
    r = api.post("/api/sweeps", json=body)
    assert r.status_code == 201, r.text
    sweep = r.json()
    grid = wait_for(
        lambda: (g := api.get(f"/api/sweeps/{sweep['id']}").json())["finished"] and g, 600, "the sweep"
    )
    cells = [cell for table in grid["tables"] for row in table["rows"] for cell in row["cells"]]
    assert len(cells) == 4
    runners = set()
    for cell in cells:
        for side in ("learned", "random"):
            half = cell[side]
            assert half["status"] == "succeeded" and half["vectors"] == 2 and half["sample"] is not None
            runners.add(half["runner"])
        assert cell["learned"]["radius"] == pytest.approx(cell["random"]["radius"])  # the twin's R
    assert len(runners) == 2  # the grid was spread over both actors
    page = BeautifulSoup(api.get(f"/sweeps/{sweep['id']}").text, "html.parser")
    assert len(page.select("td.sweep-cell")) == 4 and not page.select("#sweep-grid[hx-trigger]")


def test_a_killed_actor_job_finishes_on_another(api: httpx.Client, live: LiveServer) -> None:
    run = start(api, {"prompts": ["Tell me a story."], "mode": "reference", "steps": 300, "n_vectors": 4})
    job_id = run["job"]["id"]
    first = wait_for(lambda: api.get(f"/api/runs/{run['run_id']}/vectors").json(), 300, "a first vector")
    holder = next(a for a in live.app.state.service.executor.runners() if a["job"] == job_id)
    os.kill(holder["pid"], signal.SIGKILL)
    done = finished(api, job_id, 600)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["runner"] and str(holder["pid"]) not in done["runner"]
    vectors = api.get(f"/api/runs/{run['run_id']}/vectors", params={"values": True}).json()
    assert [v["index"] for v in vectors] == [0, 1, 2, 3]  # exactly as many as asked, none twice
    assert vectors[0]["values"] == next(v for v in vectors if v["index"] == first[0]["index"])["values"]
    assert max_abs_cos(vectors) < 1e-4
    actors_up(live)  # and a new actor took the dead one's place
