"""A real server and worker on the tiny model: work that shares the worker never changes anyone's
text, cancels reach every attempt and outlive a restart, and progress speaks in the engine's
own budget."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete

from app.main import create_app
from app.models import Generation
from tests.app.conftest import make_settings, wait_for
from tests.app.helpers import parse_sse
from tests.app.test_chat import conversation, replies
from tests.live import LiveServer, free_port

# Reference mode on the tiny model: long enough that other work is sure to arrive mid-run.
LONG_RUN = {"prompts": ["Tell me a story."], "mode": "reference", "steps": 20000, "n_vectors": 2, "seed": 3}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("interleave") / "data", tiny_dir, max_steps=20000)
    with LiveServer(create_app(settings), free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def vectors(api: httpx.Client) -> list[int]:
    r = api.post("/api/runs", json={"prompts": ["Hello."], "n_vectors": 2, "method": "random", "radius": 8.0})
    wait_for(lambda: api.get(f"/api/jobs/{r.json()['job']['id']}").json()["status"] == "succeeded", 120)
    return [int(v["id"]) for v in api.get(f"/api/runs/{r.json()['run_id']}/vectors").json()]


def job(api: httpx.Client, job_id: int) -> dict[str, Any]:
    result: dict[str, Any] = api.get(f"/api/jobs/{job_id}").json()
    return result


def chat_reply(api: httpx.Client, vector: int) -> dict[str, str]:
    """A seeded, sampled reply in a fresh conversation: the same request every time."""
    cid = conversation(api, vector, max_new_tokens=24, temperature=0.9, seed=11)
    assert (
        api.post(f"/api/conversations/{cid}/messages", json={"content": "Tell me a joke."}).status_code == 202
    )
    return {pane: m["content"] for pane, m in replies(api, cid).items()}


def events_of(api: httpx.Client, job_id: int) -> list[dict[str, Any]]:
    return [{"type": e["event"], **e["data"]} for e in parse_sse(api.get(f"/api/jobs/{job_id}/events").text)]


def cancel_and_wait(api: httpx.Client, job_id: int) -> dict[str, Any]:
    assert api.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    done: dict[str, Any] = wait_for(
        lambda: (j := job(api, job_id))["status"] in ("cancelled", "succeeded", "failed") and j,
        60,
        "the cancel",
    )
    return done


def test_a_chat_reply_is_the_same_whatever_the_worker_is_doing(api: httpx.Client, vectors: list[int]) -> None:
    idle = chat_reply(api, vectors[0])
    assert idle["steered"] != idle["unsteered"]

    # While a reference-mode MELBO run trains.
    melbo = api.post("/api/runs", json=LONG_RUN).json()["job"]["id"]
    wait_for(lambda: job(api, melbo)["progress"] > 0, 60, "training to start")
    assert chat_reply(api, vectors[0]) == idle
    assert job(api, melbo)["status"] == "running"  # the reply came between training steps
    assert cancel_and_wait(api, melbo)["status"] == "cancelled"

    # While a chain runs (reference mode: one vector at a time, 1000 steps each).
    body = {"vector_id": vectors[1], "n_vectors": 3, "mode": "reference", "prompts": ["Tell me a story."]}
    chain = api.post("/api/chains", json=body).json()["job"]["id"]
    wait_for(lambda: job(api, chain)["progress"] > 0, 60, "the chain to start")
    assert chat_reply(api, vectors[0]) == idle
    assert job(api, chain)["status"] == "running"
    assert cancel_and_wait(api, chain)["status"] == "cancelled"

    # While gallery samples generate: many random vectors (enough that the gallery outlasts a chat
    # reply even on a quiet machine, where decoding with a growing cache is fast), long samples.
    prompts = ["Tell me a story.", "Hi", "Describe the sea.", "Name a colour."]
    gallery_run = {"prompts": prompts, "n_vectors": 256, "method": "random", "radius": 8.0}
    samples = api.post("/api/runs", json=gallery_run).json()["job"]["id"]
    wait_for(lambda: job(api, samples)["message"].startswith("samples"), 60, "the gallery to start")
    assert chat_reply(api, vectors[0]) == idle
    assert job(api, samples)["status"] == "running"
    assert cancel_and_wait(api, samples)["status"] == "cancelled"


def test_concurrent_streamed_generations_equal_their_solo_texts(
    api: httpx.Client, live: LiveServer, vectors: list[int]
) -> None:
    bodies = [
        {
            "vector_id": v,
            "scale": 2.0,
            "prompt": "Write about rivers.",
            "seed": 5,
            "temperature": 0.8,
            "stream": True,
        }
        for v in vectors
    ]
    texts: dict[int, str] = {}

    def streamed(i: int) -> None:
        with httpx.Client(base_url=live.url, timeout=120) as client:
            events = parse_sse(client.post("/api/generations", json=bodies[i]).text)
            assert events[-1]["event"] == "done", events[-1]
            assert (
                "".join(e["data"]["text"] for e in events if e["event"] == "token")
                == (events[-1]["data"]["generation"]["text"])
            )
            texts[i] = events[-1]["data"]["generation"]["text"]

    threads = [threading.Thread(target=streamed, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(texts) == {0, 1} and texts[0] != texts[1]
    with live.app.state.service.db.session() as session:  # forget them: the next ones are decoded again
        session.execute(delete(Generation).where(Generation.vector_id.is_not(None)))
    for i, body in enumerate(bodies):
        events = parse_sse(api.post("/api/generations", json=body).text)
        assert events[-1]["data"]["generation"]["text"] == texts[i]


def test_cancel_retry_cancel_stops_the_job(api: httpx.Client) -> None:
    run = api.post("/api/runs", json=LONG_RUN).json()
    job_id = run["job"]["id"]
    wait_for(lambda: job(api, job_id)["progress"] > 0, 60, "training to start")
    assert cancel_and_wait(api, job_id)["status"] == "cancelled"
    assert api.post(f"/api/jobs/{job_id}/retry").status_code == 200
    wait_for(
        lambda: job(api, job_id)["status"] == "running" and job(api, job_id)["progress"] > 0, 60, "attempt 2"
    )
    second = cancel_and_wait(api, job_id)  # before the fix, attempt 2 never heard of this cancel
    assert second["status"] == "cancelled" and second["attempts"] == 2
    assert api.get(f"/api/runs/{run['run_id']}/vectors").json() == []  # 20,000 steps: none finished


def test_progress_counts_vectors_and_steps_of_the_budget(api: httpx.Client) -> None:
    body = {"prompts": ["Hi"], "n_vectors": 4, "batch_size": 2, "steps": 30, "seed": 1}
    job_id = api.post("/api/runs", json=body).json()["job"]["id"]
    wait_for(lambda: job(api, job_id)["status"] == "succeeded", 120, "the run")
    progress = [e for e in events_of(api, job_id) if e["type"] == "progress" and e.get("phase") == "training"]
    assert progress and all(e["vectors_total"] == 4 and e["budget"] == 30 for e in progress)
    assert {e["vectors_training"] for e in progress} <= {0, 2}
    assert progress[-1]["vectors_done"] == 4
    fractions = [e["progress"] for e in progress]
    assert fractions == sorted(fractions) and 0 < fractions[0] < 0.9 and fractions[-1] == pytest.approx(0.9)
    assert any(e["eta_s"] is not None for e in progress)


def test_a_cancel_survives_a_server_restart(tmp_path: Path, tiny_dir: Path) -> None:
    settings = make_settings(tmp_path / "data", tiny_dir, max_steps=20000)
    with (
        LiveServer(create_app(settings), free_port()) as server,
        httpx.Client(base_url=server.url, timeout=120) as api,
    ):
        job_id = api.post("/api/runs", json=LONG_RUN).json()["job"]["id"]
        wait_for(lambda: job(api, job_id)["progress"] > 0, 60, "training to start")
        assert api.post(f"/api/jobs/{job_id}/cancel").status_code == 200  # and the server stops at once
    with (
        LiveServer(create_app(settings), free_port()) as server,
        httpx.Client(base_url=server.url, timeout=120) as api,
    ):
        done = wait_for(lambda: (j := job(api, job_id))["status"] != "running" and j, 60, "the restart")
        assert done["status"] == "cancelled" and done["attempts"] == 1  # not started again
