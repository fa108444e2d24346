"""The compute loop in this process on the tiny model: every kind of unit leaves the model's hooks
as it found them, interactive work goes first without starving the job, and cancels take effect
between two units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from app import kinds
from app.executor.codec import to_bytes
from app.executor.loop import CHAT_FOLLOWS_S, ComputeLoop
from app.executor.protocol import (
    Cancel,
    Chat,
    ChatTokens,
    CheckChat,
    Downstream,
    Finished,
    FromWorker,
    Generate,
    Order,
    Render,
    Reply,
    RunJob,
    Stop,
    Token,
    Validate,
    Vectors,
    WorkingScales,
)
from engine import LoadedModel, get_blocks


@pytest.fixture
def events() -> list[FromWorker]:
    return []


@pytest.fixture
def loop(tiny_dir: Path, tmp_path: Path, events: list[FromWorker]) -> ComputeLoop:
    config = {"device": "cpu", "dtype": "auto", "data_dir": str(tmp_path), "train_share": 0.5}
    return ComputeLoop(events.append, config)


def hooks(lm: LoadedModel) -> list[list[int]]:
    return [sorted(b._forward_hooks) + sorted(b._forward_pre_hooks) for b in get_blocks(lm.model)]


def order(job_id: int, kind: str, spec: dict[str, Any], **extra: Any) -> RunJob:
    task = kinds.of(kind).task
    assert task is not None
    return RunJob(Order(job_id=job_id, attempt=1, kind=kind, task=task, spec=spec, **extra))


def drain(loop: ComputeLoop, check: Any = None, limit: int = 20000) -> list[str]:
    """Run units until there is no work; `check` runs after each one."""
    kinds = []
    loop._take(block=False)
    while loop.has_work():
        kind = loop.run_once()
        assert kind is not None
        kinds.append(kind)
        if check is not None:
            check()
        loop._take(block=False)
        assert len(kinds) < limit, "the loop never ran out of work"
    return kinds


def replies(events: list[FromWorker]) -> dict[str, Reply]:
    return {e.id: e for e in events if isinstance(e, Reply)}


def finished(events: list[FromWorker]) -> list[tuple[int, str]]:
    return [(e.job, e.status) for e in events if isinstance(e, Finished)]


def test_no_unit_leaves_a_hook_behind(loop: ComputeLoop, events: list[FromWorker], tiny_dir: Path) -> None:
    model = str(tiny_dir)
    lm = loop.models.get(model, set())
    with torch.no_grad():  # transformers adds hooks of its own on a first forward: let it, then compare
        lm.model(input_ids=torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    before = hooks(lm)
    vector = to_bytes(torch.randn(lm.info.width, generator=torch.Generator().manual_seed(0)) * 3)
    prompts = ["Tell me a story.", "Hi"]
    melbo = {"prompts": prompts, "model": model, "n_vectors": 2, "steps": 3}
    gallery = {"prompts": prompts, "max_new_tokens": 4, "batch": 2}
    for message in [
        Validate(id="v", model=model, kind="melbo", spec=melbo),
        Render(id="r", model=model, prompts=prompts),
        Downstream(
            id="d", model=model, block=1, target=None, vectors=[vector, vector], prompt="Hi", adapters=[]
        ),
        order(1, "melbo", {**melbo, "mode": "reference"}, gallery=gallery),
        # With the working-scale probe: its units leave no hook behind either.
        order(2, "melbo", {**melbo, "mode": "fast", "batch_size": 2}, gallery={**gallery, "probe": True}),
        order(
            3,
            "chain",
            {"prompts": prompts, "model": model, "source": 1, "n_vectors": 2, "steps": 4},
            theta0=vector,
        ),
        order(4, "calibrate", {"prompts": prompts, "model": model, "directions": 4}),
        order(
            5,
            "generate",
            {"prompts": prompts, "model": model, "scales": [1.0], "max_new_tokens": 3},
            vectors=[(9, 1, vector)],
        ),
        Chat(
            id="c",
            model=model,
            rows=[
                {
                    "messages": [{"role": "user", "content": "Hi"}],
                    "terms": [(vector, 1.0)],
                    "block": 1,
                    "max_new_tokens": 5,
                },
                {"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 5},
            ],
        ),
        Generate(
            id="g",
            model=model,
            stream=True,
            rows=[
                {
                    "prompt": "Hi",
                    "vector": vector,
                    "scale": 2.0,
                    "block": 2,
                    "max_new_tokens": 4,
                    "temperature": 0.7,
                    "seed": 1,
                },
            ],
        ),
    ]:
        loop.put(message)

    def same_hooks() -> None:
        assert hooks(lm) == before

    kinds = drain(loop, same_hooks)
    assert {"job", "interactive"} <= set(kinds)
    answered = replies(events)
    assert {rid for rid, e in answered.items() if e.ok} == {"v", "r", "d", "c", "g"}
    assert dict(finished(events)) == {
        1: "succeeded",
        2: "succeeded",
        3: "succeeded",
        4: "succeeded",
        5: "succeeded",
    }
    assert any(isinstance(e, Token) and e.id == "g" for e in events)
    assert any(isinstance(e, ChatTokens) for e in events)
    assert [e.job for e in events if isinstance(e, WorkingScales)] == [2]


def test_a_chat_is_answered_while_a_job_trains(
    loop: ComputeLoop, events: list[FromWorker], tiny_dir: Path
) -> None:
    model = str(tiny_dir)
    long = {
        "prompts": ["Tell me a story."],
        "model": model,
        "n_vectors": 1,
        "mode": "reference",
        "steps": 60,
    }
    loop.put(order(1, "melbo", long))
    for _ in range(5):  # the job is under way
        loop._take(block=False)
        loop.run_once()
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 6}
    loop.put(Chat(id="c", model=model, rows=[chat]))
    kinds = drain(loop)
    reply_at = next(i for i, e in enumerate(events) if isinstance(e, Reply))
    finished_at = next(i for i, e in enumerate(events) if isinstance(e, Finished))
    assert reply_at < finished_at  # answered between training steps, not after the run
    assert kinds.count("job") > 50


def test_a_reply_gets_its_first_token_inside_a_training_step_that_ends_unchanged(
    loop: ComputeLoop, events: list[FromWorker], tiny_dir: Path, tmp_path: Path
) -> None:
    model = str(tiny_dir)
    spec = {"prompts": ["Tell me a story.", "Hi"], "model": model, "n_vectors": 2, "batch_size": 2}
    spec["steps"] = 6
    rows = [{"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 5}]
    alone: list[FromWorker] = []
    quiet = ComputeLoop(alone.append, {"device": "cpu", "dtype": "auto", "data_dir": str(tmp_path)})
    quiet.put(order(1, "melbo", spec))
    quiet.put(Chat(id="c", model=model, rows=rows))
    drain(quiet)

    loop.put(order(1, "melbo", spec))
    loop._take(block=False)
    for _ in range(2):  # set-up, then a first step: training is under way
        loop.run_once()
    lm = loop.models.get(model, set())
    before = hooks(lm)
    loop.put(Chat(id="c", model=model, rows=rows))  # arrives while the next step runs
    loop._timed("job", loop._job_unit)
    first = [row.tokens for row in loop.generations.decoders[model]._batch_rows()]
    assert first and all(len(tokens) == 1 for tokens in first)  # its first token, from inside the step
    assert loop.spent["interactive"] > 0 and hooks(lm) == before
    drain(loop)

    def vectors(sent: list[FromWorker]) -> list[bytes]:
        return [row["values"] for e in sent if isinstance(e, Vectors) for row in e.rows]

    assert vectors(events) == vectors(alone)  # bit for bit
    assert replies(events)["c"].value["rows"] == replies(alone)["c"].value["rows"]


def test_interactive_work_goes_first_but_the_job_keeps_its_share(loop: ComputeLoop, tiny_dir: Path) -> None:
    model = str(tiny_dir)
    loop.put(
        order(
            1, "melbo", {"prompts": ["Hi"], "model": model, "n_vectors": 1, "mode": "reference", "steps": 50}
        )
    )
    loop.put(Chat(id="c", model=model, rows=[{"messages": [{"role": "user", "content": "Hi"}]}]))
    loop._take(block=False)
    assert loop.run_once() == "interactive"  # the chat's admission, a quick unit
    loop.spent = {"job": 1.0, "interactive": 1.0}  # at its share: the chat goes first
    assert loop.run_once() == "interactive"
    loop.spent = {"job": 1.0, "interactive": 9.0}  # below its share: the job's turn
    assert loop.run_once() == "job"
    loop.put(Render(id="r", model=model, prompts=["Hi"]))
    loop._take(block=False)
    assert loop.run_once() == "interactive"  # quick requests never wait for the job


def test_a_decode_step_gives_way_to_a_message_then_the_next_runs(
    loop: ComputeLoop, events: list[FromWorker], tiny_dir: Path
) -> None:
    model = str(tiny_dir)
    rows = [{"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 8}]
    loop.put(Chat(id="c", model=model, rows=rows))
    loop._take(block=False)
    loop.run_once()  # admission
    loop.run_once()  # prefill: the first token
    decoder = loop.generations.decoders[model]

    def generated() -> int:
        return sum(len(row.tokens) for row in decoder._batch_rows())

    assert generated() == 1
    loop.put(Render(id="r", model=model, prompts=["Hi"]))  # arrives mid-step
    assert loop.run_once() == "interactive"
    assert generated() == 1  # the step gave way
    loop._take(block=False)
    loop.run_once()
    assert "r" in replies(events)  # answered before the batch's next token
    loop.put(Render(id="r2", model=model, prompts=["Hi"]))
    loop.run_once()  # the step after a preempted one runs to its end
    assert generated() == 2
    drain(loop)
    assert replies(events)["c"].ok and replies(events)["c"].value["rows"][0]["n_tokens"] == 8


def test_a_passed_chat_check_holds_the_loop_for_its_chat(loop: ComputeLoop, tiny_dir: Path) -> None:
    model = str(tiny_dir)
    rows = [{"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 4}]
    loop.put(CheckChat(id="k", model=model, rows=rows))
    loop._take(block=False)
    loop.run_once()
    assert 0 < loop._chat_follows_s() <= CHAT_FOLLOWS_S  # the chat is on its way: no job unit yet
    loop.put(Chat(id="c", model=model, rows=rows))
    loop._take(block=False)
    loop.run_once()  # its admission
    assert loop._chat_follows_s() == 0
    loop.put(CheckChat(id="bad", model=model, rows=[{"messages": []}]))
    loop._take(block=False)
    loop.run_once()
    assert loop._chat_follows_s() == 0  # a check that failed announces no chat


def test_a_cancel_stops_the_job_at_its_next_unit(
    loop: ComputeLoop, events: list[FromWorker], tiny_dir: Path
) -> None:
    model = str(tiny_dir)
    spec = {"prompts": ["Hi"], "model": model, "n_vectors": 3, "mode": "reference", "steps": 10**4}
    loop.put(order(7, "melbo", spec))
    loop.put(order(8, "melbo", spec))  # waiting behind it
    for _ in range(4):
        loop._take(block=False)
        loop.run_once()
    loop.put(Cancel(8))
    loop.put(Cancel(7))
    drain(loop, limit=10)
    assert finished(events) == [(8, "cancelled"), (7, "cancelled")]  # the waiting one never started
    assert not any(isinstance(e, Vectors) for e in events)


def test_a_stop_ends_a_generation_and_its_reply_says_so(
    loop: ComputeLoop, events: list[FromWorker], tiny_dir: Path
) -> None:
    model = str(tiny_dir)
    row = {"prompt": "Hi", "max_new_tokens": 50}
    loop.put(Generate(id="g", model=model, stream=True, rows=[row]))
    loop.put(Generate(id="h", model=model, rows=[row]))
    for _ in range(4):
        loop._take(block=False)
        loop.run_once()
    loop.put(Stop("g"))
    loop.put(Generate(id="early", model=model, rows=[row]))
    loop.put(Stop("early"))  # before it was even admitted
    drain(loop)
    answered = replies(events)
    assert answered["g"].value["rows"][0]["finish_reason"] == "stopped"
    assert answered["early"].ok and answered["early"].value["rows"][0]["n_tokens"] == 0
    assert answered["h"].value["rows"][0]["n_tokens"] in range(1, 51)


def test_a_bad_request_is_the_users_and_a_bug_is_ours(
    loop: ComputeLoop, events: list[FromWorker], tiny_dir: Path
) -> None:
    model = str(tiny_dir)
    bad_block = {"prompt": "Hi", "block": 99, "vector": to_bytes(torch.zeros(64)), "scale": 1.0}
    loop.put(Generate(id="user", model=model, rows=[bad_block]))
    loop.put(
        Downstream(id="ours", model=model, block=1, target=None, vectors=[b"abc"], prompt="Hi", adapters=[])
    )
    drain(loop)
    answered = replies(events)
    assert not answered["user"].ok and "out of range" in answered["user"].error
    assert not answered["user"].internal
    assert answered["ours"].internal and "Traceback" in answered["ours"].trace


def test_a_model_that_fails_to_load_fails_only_its_request(
    loop: ComputeLoop, events: list[FromWorker], tmp_path: Path
) -> None:
    loop.put(Render(id="r", model=str(tmp_path / "nothing"), prompts=["Hi"]))
    drain(loop)
    assert not replies(events)["r"].ok


def test_the_embedding_model_follows_the_device_setting(tmp_path: Path) -> None:
    """`auto` (the default setting) picks a device for the embedder as it does for models."""
    from app.executor.resident import Models
    from engine.models import pick_device

    held = Models({"device": "auto", "dtype": "auto", "data_dir": str(tmp_path)})
    assert held.embedder().device == pick_device("auto")
    assert held.embedder() is held.embedder()  # loaded once per worker
