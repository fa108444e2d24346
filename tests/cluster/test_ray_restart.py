"""A restarted server on a Ray cluster loses no job: the new server's actors resume it from what
the old one stored (its own module: the other module's actors hold the cluster's CPUs)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.app.conftest import wait_for
from tests.app.helpers import max_abs_cos
from tests.cluster.test_ray import actors_up, finished, ray_settings, start
from tests.live import LiveServer, free_port

pytestmark = pytest.mark.cluster


def test_a_restarted_server_loses_no_job(ray_cluster: None, tmp_path: Path, tiny_dir: Path) -> None:
    settings = ray_settings(tmp_path / "data", tiny_dir)
    body = {"prompts": ["Tell me a story."], "mode": "reference", "steps": 300, "n_vectors": 3}
    with (
        LiveServer(create_app(settings), free_port()) as server,
        httpx.Client(base_url=server.url, timeout=120) as c,
    ):
        actors_up(server)
        run = start(c, body)
        wait_for(lambda: c.get(f"/api/runs/{run['run_id']}/vectors").json(), 300, "a first vector")
    with (
        LiveServer(create_app(settings), free_port()) as server,
        httpx.Client(base_url=server.url, timeout=120) as c,
    ):
        done = finished(c, run["job"]["id"], 600)
        assert done["status"] == "succeeded", done["error"]
        vectors = c.get(f"/api/runs/{run['run_id']}/vectors", params={"values": True}).json()
        assert [v["index"] for v in vectors] == [0, 1, 2] and max_abs_cos(vectors) < 1e-4
