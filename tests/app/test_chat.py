"""Steered chat against a real server and worker on the tiny model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.main import create_app
from app.models import Message
from tests.app.conftest import WAIT_S, make_settings, wait_for
from tests.live import LiveServer, free_port


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("chat") / "data", tiny_dir)
    with LiveServer(create_app(settings), free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=WAIT_S) as client:
        yield client


@pytest.fixture(scope="module")
def vector_id(api: httpx.Client) -> int:
    r = api.post("/api/runs", json={"prompts": ["Hello."], "n_vectors": 1, "method": "random", "radius": 8.0})
    run_id = r.json()["run_id"]
    wait_for(lambda: api.get(f"/api/jobs/{r.json()['job']['id']}").json()["status"] == "succeeded")
    return int(api.get(f"/api/runs/{run_id}/vectors").json()[0]["id"])


def conversation(api: httpx.Client, vector: int | None, **settings: Any) -> int:
    c = api.post("/api/conversations", json={"vector_id": vector}).json()
    if settings:
        body = {"terms": c["steering"] and [{"vector_id": vector}], "settings": {**c["settings"], **settings}}
        assert api.put(f"/api/conversations/{c['id']}/steering", json=body).status_code == 200
    return int(c["id"])


def replies(api: httpx.Client, cid: int, turn: int | None = None) -> dict[str, dict[str, Any]]:
    """The finished assistant messages of the last (or given) turn, by pane."""

    def done() -> dict[str, dict[str, Any]] | None:
        messages = api.get(f"/api/conversations/{cid}").json()["messages"]
        last = turn or max(m["turn"] for m in messages)
        mine = [m for m in messages if m["role"] == "assistant" and m["turn"] == last]
        return {m["pane"]: m for m in mine} if mine and all(m["finish_reason"] for m in mine) else None

    result: dict[str, dict[str, Any]] = wait_for(done, what="the replies")
    return result


def stored_messages(live: LiveServer) -> int:
    with live.app.state.service.db.session() as session:
        return session.scalar(select(func.count()).select_from(Message)) or 0


def test_both_panes_answer_and_record_their_steering(api: httpx.Client, vector_id: int) -> None:
    cid = conversation(api, vector_id, max_new_tokens=12, temperature=0.9, seed=4)
    assert (
        api.post(f"/api/conversations/{cid}/messages", json={"content": "Tell me a joke."}).status_code == 202
    )
    first = replies(api, cid)
    steered, unsteered = first["steered"], first["unsteered"]
    assert steered["steering"] == {
        "block": steered["steering"]["block"],
        "terms": [{"vector_id": vector_id, "scale": 1.0}],
    }
    assert unsteered["steering"]["terms"] == [] and steered["sampling"]["seed"] == 4
    assert steered["content"] != unsteered["content"]
    # Same seed and settings: the same replies again.
    assert api.post(f"/api/conversations/{cid}/regenerate").status_code == 202
    again = replies(api, cid)
    assert (again["steered"]["content"], again["unsteered"]["content"]) == (
        steered["content"],
        unsteered["content"],
    )
    # Answering again keeps the earlier replies, marked; the history uses the newest.
    messages = api.get(f"/api/conversations/{cid}").json()["messages"]
    earlier = [m["id"] for m in messages if m["role"] == "assistant" and m["superseded"]]
    assert earlier == [steered["id"], unsteered["id"]] and again["steered"]["id"] != steered["id"]
    # Scale 0 from the next reply on. Each pane answers its own history, so compare on the turn
    # whose history both panes share: the first, answered again.
    body = {"terms": [{"vector_id": vector_id, "scale": 0.0}]}
    assert api.put(f"/api/conversations/{cid}/steering", json=body).status_code == 200
    api.post(f"/api/conversations/{cid}/regenerate")
    zero = replies(api, cid)
    assert zero["steered"]["content"] == zero["unsteered"]["content"] == unsteered["content"]
    assert zero["steered"]["steering"]["terms"] == [{"vector_id": vector_id, "scale": 0.0}]
    api.post(f"/api/conversations/{cid}/messages", json={"content": "And another."})
    second = replies(api, cid)
    assert second["steered"]["steering"]["terms"] == [{"vector_id": vector_id, "scale": 0.0}]
    exported = api.get(f"/api/conversations/{cid}/export", params={"format": "json"}).json()
    assert [m["content"] for m in exported["messages"] if m["role"] == "user"] == ["Tell me a joke."] * 2 + [
        "And another."
    ] * 2
    markdown = api.get(f"/api/conversations/{cid}/export", params={"format": "md"}).text
    assert "## You (turn 2)" in markdown and f"#{vector_id} × 0" in markdown


def test_stop_and_a_client_that_leaves(
    api: httpx.Client, live: LiveServer, vector_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = conversation(api, vector_id, max_new_tokens=200, temperature=1.0)
    api.post(f"/api/conversations/{cid}/messages", json={"content": "Write a long story."})
    assert api.post(f"/api/conversations/{cid}/stop").json() == {"stopped": True}
    stopped = replies(api, cid)
    assert {m["finish_reason"] for m in stopped.values()} <= {"stopped", "eos"}
    assert all(m["n_tokens"] < 200 for m in stopped.values())

    monkeypatch.setattr(live.app.state.service.settings, "chat_grace_s", 0.1)
    cid = conversation(api, vector_id, max_new_tokens=220, temperature=1.0)  # long: it must outlast the grace
    api.post(f"/api/conversations/{cid}/messages", json={"content": "Another long one."})
    with api.stream("GET", f"/api/conversations/{cid}/stream") as r:
        for line in r.iter_lines():
            if line.startswith("event: tokens"):
                break  # and hang up mid-stream
    left = replies(api, cid)
    assert any(m["finish_reason"] == "stopped" for m in left.values())


def test_a_reload_picks_up_the_reply_in_progress(api: httpx.Client, vector_id: int) -> None:
    cid = conversation(api, vector_id, max_new_tokens=60)
    api.post(f"/api/conversations/{cid}/messages", json={"content": "Count slowly."})
    events: list[tuple[str, Any]] = []
    with api.stream("GET", f"/api/conversations/{cid}/stream") as r:
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    assert events[0][0] == "snapshot" and events[-1][0] == "done"
    streamed = {"steered": "", "unsteered": ""}
    if events[0][1]["live"]:
        streamed = {**streamed, **events[0][1]["panes"]}
    for kind, data in events:
        if kind == "tokens":
            for pane, text in data["panes"].items():
                streamed[pane] += text
    final = replies(api, cid)
    assert streamed == {pane: final[pane]["content"] for pane in ("steered", "unsteered")}
    late = api.get(f"/api/conversations/{cid}/stream").text  # after the end: a snapshot that says so
    assert '"live": false' in late


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("messages", {"content": "   "}, "the message is empty"),
        ("messages", {"content": "word " * 400}, "exceeds the model's context"),
    ],
)
def test_bad_messages_are_refused_and_store_nothing(
    api: httpx.Client, live: LiveServer, vector_id: int, path: str, body: dict[str, Any], message: str
) -> None:
    cid = conversation(api, vector_id)
    before = stored_messages(live)
    r = api.post(f"/api/conversations/{cid}/{path}", json=body)
    assert r.status_code == 422 and message in r.json()["detail"]
    assert stored_messages(live) == before


def test_bad_steering_is_refused(api: httpx.Client, vector_id: int) -> None:
    cid = conversation(api, vector_id)
    r = api.put(f"/api/conversations/{cid}/steering", json={"terms": [{"vector_id": 987654}]})
    assert r.status_code == 422 and "no vector 987654" in r.json()["detail"]
    raw = (
        '{"terms": [{"vector_id": ' + str(vector_id) + ', "scale": Infinity}]}'
    )  # what json.dumps writes for inf
    r = api.put(
        f"/api/conversations/{cid}/steering", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "finite" in r.json()["detail"]
    assert api.get(f"/api/conversations/{cid}").json()["steering"][0]["scale"] == 1.0  # unchanged


def test_chat_answers_while_a_run_trains(api: httpx.Client, vector_id: int) -> None:
    r = api.post(
        "/api/runs",
        json={"prompts": ["Tell me a story."], "n_vectors": 3, "mode": "reference", "steps": 2000},
    )
    job_id = r.json()["job"]["id"]
    wait_for(lambda: api.get(f"/api/jobs/{job_id}").json()["progress"] > 0, what="training to start")
    cid = conversation(api, vector_id, max_new_tokens=8)
    began = time.monotonic()
    api.post(f"/api/conversations/{cid}/messages", json={"content": "Quick question."})
    replies(api, cid)
    assert api.get(f"/api/jobs/{job_id}").json()["status"] == "running", "the reply waited for the run"
    api.post(f"/api/jobs/{job_id}/cancel")
    assert time.monotonic() - began < 60
