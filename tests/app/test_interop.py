"""Vectors out and back in: bit-exact round trips, repeng-style GGUF, and files that are refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.models import Run, Vector
from tests.app.conftest import wait_job
from tests.app.helpers import vectors_of


@pytest.fixture(scope="module")
def trained(client: TestClient) -> list[dict[str, Any]]:
    r = client.post(
        "/api/runs", json={"prompts": ["Hello there."], "n_vectors": 4, "method": "random", "radius": 5.0}
    )
    wait_job(client, r.json()["job"]["id"])
    return vectors_of(client, r.json()["run_id"])


@pytest.fixture(scope="module")
def vector(trained: list[dict[str, Any]]) -> dict[str, Any]:
    return trained[0]


def upload(client: TestClient, name: str, data: bytes, **form: str) -> Any:
    return client.post("/api/imports", files={"file": (name, data)}, data=form)


def counts(client: TestClient) -> tuple[int, int]:
    with client.app.state.service.db.session() as session:
        return (
            session.scalar(select(func.count()).select_from(Run)) or 0,
            session.scalar(select(func.count()).select_from(Vector)) or 0,
        )


@pytest.mark.parametrize(("fmt", "which"), [("safetensors", 0), ("gguf", 1)])
def test_export_then_import_is_bit_exact(
    client: TestClient, trained: list[dict[str, Any]], fmt: str, which: int
) -> None:
    vector = trained[which]
    r = client.get(f"/api/vectors/{vector['id']}/export", params={"format": fmt})
    assert r.status_code == 200 and f"vector-{vector['id']}.{fmt}" in r.headers["content-disposition"]
    imported = upload(client, f"v.{fmt}", r.content)
    assert imported.status_code == 201, imported.text
    run = client.get(f"/api/runs/{imported.json()['run_id']}").json()
    back = vectors_of(client, run["id"])
    assert len(back) == 1 and back[0]["values"] == vector["values"] and back[0]["block"] == vector["block"]
    meta = run["result"]["metadata"]
    assert meta["steerscope_vector_id"] == vector["id"] and meta["prompts"] == ["Hello there."]
    assert run["result"]["same_as"] == {"0": vector["id"]}  # read back: its twin is noted
    assert run["prompts"] == ["Hello there."] and len(imported.json()["sample_jobs"]) == 1


def test_a_file_imported_twice_is_noticed(client: TestClient, trained: list[dict[str, Any]]) -> None:
    data = client.get(f"/api/vectors/{trained[3]['id']}/export", params={"format": "safetensors"}).content
    first = upload(client, "twice.safetensors", data)
    assert first.status_code == 201, first.text
    before = counts(client)
    again = upload(client, "twice.safetensors", data)
    assert again.status_code == 409
    assert again.json()["detail"] == (
        f"twice.safetensors was imported already: vector #{first.json()['vector_ids'][0]} "
        f"of run #{first.json()['run_id']}"
    )
    assert counts(client) == before
    page = client.post("/import", files={"file": ("twice.safetensors", data)})
    assert page.status_code == 409 and f'href="/runs/{first.json()["run_id"]}"' in page.text


def test_a_run_exports_in_one_file(client: TestClient, vector: dict[str, Any]) -> None:
    r = client.get(f"/api/runs/{vector['run_id']}/export", params={"format": "safetensors"})
    back = upload(client, "run.safetensors", r.content)
    assert back.status_code == 201, back.text
    assert [v["values"] for v in vectors_of(client, back.json()["run_id"])] == [
        v["values"] for v in vectors_of(client, vector["run_id"])
    ]
    payload = client.get(f"/api/vectors/{vector['id']}/export", params={"format": "neuronpedia"}).json()
    assert payload["layerNumber"] == vector["block"] + 1 and payload["hookType"] == "hook_resid_pre"
    assert payload["vector"] == vector["values"]


def test_a_gguf_written_the_way_repeng_writes_imports(client: TestClient, tmp_path: Path) -> None:
    direction = np.linspace(-1, 1, 64, dtype=np.float32)
    path = tmp_path / "repeng.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 1)
    writer.add_tensor("direction.2", direction)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    r = upload(client, "repeng.gguf", path.read_bytes())
    assert r.status_code == 201, r.text
    (back,) = vectors_of(client, r.json()["run_id"])
    assert back["block"] == 2 and np.array_equal(np.array(back["values"], dtype=np.float32), direction)


def safetensors_bytes(array: np.ndarray) -> bytes:
    header = json.dumps(
        {"v": {"dtype": "F32", "shape": list(array.shape), "data_offsets": [0, array.nbytes]}}
    )
    raw = header.encode()
    return len(raw).to_bytes(8, "little") + raw + array.astype("<f4").tobytes()


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("cut.safetensors", lambda: safetensors_bytes(np.ones((1, 64), np.float32))[:-10], "cut.safetensors"),
        ("narrow.safetensors", lambda: safetensors_bytes(np.ones((1, 32), np.float32)), "width"),
        ("nan.safetensors", lambda: safetensors_bytes(np.full((1, 64), np.nan, np.float32)), "NaN"),
        ("evil.pt", lambda: pickle.dumps({"vectors": [1.0] * 64}), "pickle"),
        ("empty.gguf", lambda: b"", "empty"),
    ],
)
def test_bad_files_are_refused_and_write_nothing(
    client: TestClient, name: str, make: Any, message: str
) -> None:
    before = counts(client)
    r = upload(client, name, make(), block="1")
    assert r.status_code == 422, r.text
    assert message.lower() in r.json()["detail"].lower()
    assert counts(client) == before


def test_an_out_of_range_block_is_refused(client: TestClient) -> None:
    before = counts(client)
    r = upload(client, "v.safetensors", safetensors_bytes(np.ones((1, 64), np.float32)), block="9")
    assert r.status_code == 422 and "block 9 is out of range" in r.json()["detail"]
    r = upload(client, "v.safetensors", safetensors_bytes(np.ones((1, 64), np.float32)))
    assert r.status_code == 422 and "give the block" in r.json()["detail"]
    assert counts(client) == before
