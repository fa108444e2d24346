"""Steering adapters through the server (real worker, tiny model): a run stored and browsed like
vectors, scored against its random twin, exported for PEFT, and steering generations and chats."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.models import Job, Run
from app.settings import Settings
from tests.app.conftest import make_settings, wait_for, wait_job
from tests.app.helpers import row_counts, score_run, vectors_of

PROMPTS = ["Tell me a story.", "What is two plus two?"]


@pytest.fixture(scope="module")
def shared_settings(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Settings:
    """The module's server scores each learned run by itself, as a user's does."""
    return make_settings(tmp_path_factory.mktemp("adapters") / "data", tiny_dir, auto_score=True)


def start(client: TestClient, **body: Any) -> int:
    r = client.post("/api/runs", json={"prompts": PROMPTS, **body})
    assert r.status_code == 201, r.text
    assert wait_job(client, r.json()["job"]["id"])["status"] == "succeeded"
    return int(r.json()["run_id"])


def quiet(client: TestClient) -> None:
    """Every job finished (scorings queued by themselves included): the row counts stand still."""
    for job in client.get("/api/jobs").json():
        wait_job(client, job["id"])


@pytest.fixture(scope="module")
def adapter_run(client: TestClient) -> dict[str, Any]:
    run_id = start(client, method="adapter", rank=4, n_vectors=3, steps=6, batch_size=2, twin=True, seed=1)
    service = client.app.state.service
    with service.db.session() as session:
        twin = session.scalars(select(Run).where(Run.twin_of == run_id)).one()
        twin_id, twin_job = twin.id, session.scalars(select(Job).where(Job.run_id == twin.id)).one().id
    assert wait_job(client, twin_job)["status"] == "succeeded"
    scored = score_run(service, run_id)
    return {"run": run_id, "twin": twin_id, "scored": scored}


def test_an_adapter_run_is_stored_sampled_and_scored_like_vectors(
    client: TestClient, adapter_run: dict[str, Any]
) -> None:
    run = client.get(f"/api/runs/{adapter_run['run']}").json()
    assert run["kind"] == "adapter" and run["radius"] > 0 and run["spec"]["rank"] == 4
    assert "orthogonal" not in run["spec"] and "mode" not in run["spec"]
    vectors = vectors_of(client, run["id"])
    assert [v["index"] for v in vectors] == [0, 1, 2]
    for v in vectors:
        assert v["adapter"] == {"rank": 4, "radius": pytest.approx(run["radius"])}
        assert v["block"] == run["source"] and len(v["values"]) == v["width"] == 64
        assert v["norm"] > 0 and v["kl"] >= 0 and v["objective"] > 0
    # Its random twin: adapters of the same rank at the same R, untrained.
    twin = client.get(f"/api/runs/{adapter_run['twin']}").json()
    assert twin["kind"] == "adapter" and twin["spec"]["steps"] == 0
    assert twin["radius"] == pytest.approx(run["radius"], rel=1e-6)
    assert all(v["metrics"]["steps"] == 0 for v in vectors_of(client, twin["id"]))
    assert max(v["objective"] for v in vectors) > max(v["objective"] for v in vectors_of(client, twin["id"]))
    # The gallery: every adapter and the unsteered model on every prompt, then scored with the twin.
    samples = client.get("/api/generations", params={"run_id": run["id"]}).json()
    assert len(samples) == 3 * len(PROMPTS)
    assert {s["vector_id"] for s in samples} == {v["id"] for v in vectors}
    rows = adapter_run["scored"]["rows"]
    assert {r["random"] for r in rows} == {False, True}  # the twin's completions are the baseline
    assert "discovery" in adapter_run["scored"]["result"]
    assert all(s["effect"] is not None and s["beyond_random"] is not None for s in samples)
    page = BeautifulSoup(client.get(f"/runs/{run['id']}").text, "html.parser")
    assert len(page.select("article.card")) == 3


def test_the_adapter_page_shows_rank_r_block_and_the_export(
    client: TestClient, adapter_run: dict[str, Any]
) -> None:
    run = client.get(f"/api/runs/{adapter_run['run']}").json()
    adapter = vectors_of(client, run["id"])[0]
    page = BeautifulSoup(client.get(f"/vectors/{adapter['id']}").text, "html.parser")
    assert page.select_one("#adapter-rank").text.strip() == "4"
    assert float(page.select_one("#adapter-radius").text) == pytest.approx(run["radius"], rel=1e-3)
    assert page.select_one("#adapter-block").text.startswith(str(run["source"]))
    assert page.select_one("#export-peft")["href"] == f"/api/vectors/{adapter['id']}/peft"
    for refused in ("#start-chain", "#start-scale-sweep", "#start-rpath"):  # they take steering vectors
        assert page.select_one(refused) is None


def test_the_peft_export_loads_in_peft_and_writes_our_text(
    client: TestClient, adapter_run: dict[str, Any], tiny_dir: Path, tmp_path: Path
) -> None:
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = vectors_of(client, adapter_run["run"])[1]
    r = client.get(f"/api/vectors/{adapter['id']}/peft")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        names = set(archive.namelist())
        folder = f"adapter-{adapter['id']}"
        assert names == {f"{folder}/adapter_model.safetensors", f"{folder}/adapter_config.json"}
        archive.extractall(tmp_path)
    model = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_dir), tmp_path / folder
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    prompt = PROMPTS[0]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    theirs = out[0, ids["input_ids"].shape[1] :].tolist()
    if tokenizer.eos_token_id in theirs:
        theirs = theirs[: theirs.index(tokenizer.eos_token_id)]
    body = {"vector_id": adapter["id"], "prompt": prompt, "max_new_tokens": 16}
    ours = client.post("/api/generations", json=body).json()
    assert ours["generation"]["text"] == tokenizer.decode(theirs, skip_special_tokens=True)
    # Steering with it changes the answer, and scale 0 is the unsteered model exactly.
    strong = client.post("/api/generations", json={**body, "scale": 8.0}).json()
    assert strong["generation"]["text"] != strong["unsteered"]["text"]
    zero = client.post("/api/generations", json={**body, "scale": 0.0}).json()
    assert zero["generation"]["text"] == zero["unsteered"]["text"]


def test_vector_files_and_chains_refuse_adapters_and_peft_refuses_vectors(
    client: TestClient, adapter_run: dict[str, Any]
) -> None:
    adapter = vectors_of(client, adapter_run["run"])[0]
    for fmt in ("safetensors", "gguf", "json"):
        r = client.get(f"/api/vectors/{adapter['id']}/export", params={"format": fmt})
        assert r.status_code == 422 and "PEFT adapter" in r.text, r.text
    r = client.get(f"/api/runs/{adapter_run['run']}/export")
    assert r.status_code == 422 and "steering adapters" in r.text
    r = client.post("/api/chains", json={"vector_id": adapter["id"]})
    assert r.status_code == 422 and "is a steering adapter" in r.text
    for refinement in ("rpath", "scale-sweep"):
        r = client.post(f"/api/vectors/{adapter['id']}/{refinement}", json={})
        assert r.status_code == 422 and "is a steering adapter" in r.text, (refinement, r.text)
    melbo = start(client, n_vectors=1, steps=2)
    vector = vectors_of(client, melbo)[0]
    r = client.get(f"/api/vectors/{vector['id']}/peft")
    assert r.status_code == 422 and "not an adapter" in r.text


def test_a_chat_combines_vectors_and_one_adapter_and_refuses_a_second(
    client: TestClient, adapter_run: dict[str, Any]
) -> None:
    a, b = (v["id"] for v in vectors_of(client, adapter_run["run"])[:2])
    melbo = start(client, n_vectors=1, steps=2, radius=4.0)
    vector = vectors_of(client, melbo)[0]
    c = client.post("/api/conversations", json={"vector_id": a}).json()
    assert c["steering"][0]["adapter"] is True
    cid = c["id"]
    settings = {**c["settings"], "max_new_tokens": 8, "temperature": 0.0}
    terms = [{"vector_id": a, "scale": 4.0}, {"vector_id": vector["id"], "scale": 2.0}]
    r = client.put(f"/api/conversations/{cid}/steering", json={"terms": terms, "settings": settings})
    assert r.status_code == 200, r.text
    before = client.get(f"/api/conversations/{cid}").json()
    r = client.put(f"/api/conversations/{cid}/steering", json={"terms": [*terms, {"vector_id": b}]})
    assert r.status_code == 422 and "at most one adapter" in r.text, r.text
    assert client.get(f"/api/conversations/{cid}").json()["steering"] == before["steering"]
    assert client.post(f"/api/conversations/{cid}/messages", json={"content": "Hello!"}).status_code == 202

    def replies() -> dict[str, Any] | None:
        messages = client.get(f"/api/conversations/{cid}").json()["messages"]
        mine = {m["pane"]: m for m in messages if m["role"] == "assistant"}
        return mine if len(mine) == 2 and all(m["finish_reason"] for m in mine.values()) else None

    done = wait_for(replies, what="the replies")
    steered, unsteered = done["steered"], done["unsteered"]
    assert steered["steering"] == {
        "block": vector["block"],
        "terms": [{"vector_id": vector["id"], "scale": 2.0}],
        "adapter": {"vector_id": a, "scale": 4.0, "block": adapter_run_block(client, a)},
    }
    assert unsteered["steering"] == {"block": None, "terms": []}
    assert steered["content"] != unsteered["content"]
    markdown = client.get(f"/api/conversations/{cid}/export", params={"format": "md"}).text
    assert f"adapter #{a} × 4" in markdown


def adapter_run_block(client: TestClient, vector_id: int) -> int:
    return int(client.get(f"/api/vectors/{vector_id}").json()["block"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"rank": 0}, "rank must be between 1 and 1024"),
        ({"rank": 65}, "rank must be at most 64"),
        ({"rank": 100_000}, "rank must be"),
        ({"orthogonal": False}, "orthogonal applies to MELBO only"),
        ({"mode": "reference"}, "mode applies to MELBO only"),
        ({"radius_fraction": 0.1}, "radius_fraction applies to MELBO only"),
        ({"beta": 0.5}, "beta applies to dct only"),
        ({"alpha": 2}, "alpha"),
        ({"radius": -1.0}, "R (radius) must be a finite number > 0"),
    ],
)
def test_bad_adapter_runs_are_refused_and_write_nothing(
    client: TestClient, body: dict[str, Any], message: str
) -> None:
    quiet(client)
    before = row_counts(client)
    r = client.post("/api/runs", json={"prompts": PROMPTS, "method": "adapter", **body})
    assert r.status_code == 422 and message in r.text, r.text
    assert row_counts(client) == before


def test_rank_belongs_to_adapter_runs_and_the_form_says_which_field_is_wrong(client: TestClient) -> None:
    quiet(client)
    before = row_counts(client)
    r = client.post("/api/runs", json={"prompts": PROMPTS, "rank": 4})
    assert r.status_code == 422 and "rank applies to adapter runs only" in r.text
    form = {"prompts": "Tell me a story.", "method": "adapter", "rank": "65", "orthogonal": "on"}
    page = client.post("/runs/new", data=form)
    assert page.status_code == 422
    error = BeautifulSoup(page.text, "html.parser").select_one("#error-rank")
    assert error is not None and "rank must be at most 64" in error.text
    assert row_counts(client) == before
    r = client.post(
        "/runs/new", data={**form, "rank": "2", "n_vectors": "1", "steps": "1"}, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    run = client.get(f"/api/runs/{int(r.headers['location'].rsplit('/', 1)[1])}").json()
    assert run["kind"] == "adapter" and run["spec"]["rank"] == 2


def test_compare_puts_adapters_beside_vectors(client: TestClient, adapter_run: dict[str, Any]) -> None:
    a, b = (v["id"] for v in vectors_of(client, adapter_run["run"])[:2])
    vector = vectors_of(client, start(client, n_vectors=1, steps=2))[0]
    ids = f"{a},{b},{vector['id']}"
    page = BeautifulSoup(client.get("/compare", params={"ids": ids}).text, "html.parser")
    assert len(page.select(".compare-cell")) == 4  # unsteered + two adapters + a vector
    cell = client.post(
        "/compare/cell", data={"vector_id": str(a), "prompt": PROMPTS[0], "max_new_tokens": "6", "scale": "4"}
    )
    assert cell.status_code == 200 and "error" not in BeautifulSoup(cell.text, "html.parser").get_text()
    stored = client.get("/api/generations", params={"vector_id": a}).json()
    assert any(g["scale"] == 4.0 and g["max_new_tokens"] == 6 for g in stored)
    heat = BeautifulSoup(
        client.post("/compare/downstream", data={"ids": ids, "prompt": "hi"}).text, "html.parser"
    )
    cells = [[float(td.get_text()) for td in row.select("td")] for row in heat.select("tr")[1:]]
    assert [cells[i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    assert all(abs(cells[i][j]) < 0.999 for i in range(3) for j in range(3) if i != j)
