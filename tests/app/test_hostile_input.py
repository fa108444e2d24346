"""Input an attacker would send: every case that once answered 500 (or was stored) now gets a 4xx
with a message in plain words, and writes nothing."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient
from safetensors.numpy import save

from tests.app.conftest import wait_job
from tests.app.helpers import row_counts, vectors_of

BIG = 2**63  # one past SQLite's largest integer
SAFE = str(BIG - 1)


@pytest.fixture(scope="module")
def vector(client: TestClient) -> dict[str, Any]:
    r = client.post(
        "/api/runs", json={"prompts": ["Hi there."], "n_vectors": 2, "method": "random", "radius": 5.0}
    )
    assert r.status_code == 201, r.text
    wait_job(client, r.json()["job"]["id"])
    return vectors_of(client, r.json()["run_id"])[0]


@pytest.fixture(scope="module")
def conversation(client: TestClient) -> int:
    r = client.post("/api/conversations", json={})
    assert r.status_code == 201, r.text
    cid: int = r.json()["id"]
    return cid


def refused(client: TestClient, method: str, url: str, status: int = 422, **kwargs: Any) -> str:
    """Send it; it must get `status`, write nothing, and say why in words (no pydantic jargon)."""
    before = row_counts(client)
    r = client.request(method, url, **kwargs)
    assert r.status_code == status, (url, r.status_code, r.text[:300])
    assert row_counts(client) == before, url
    if "json" in r.headers.get("content-type", ""):
        text = r.json()["detail"]
    else:  # a page: the error page's message, or a form's error, as the reader sees it
        text = BeautifulSoup(r.text, "html.parser").get_text()
    assert "Input should be" not in text and "validation error" not in text and "[type=" not in text
    return str(text)


ID_ROUTES = [
    ("GET", "/api/runs/{n}"),
    ("GET", "/api/runs/{n}/vectors"),
    ("GET", "/api/runs/{n}/export"),
    ("GET", "/api/vectors/{n}"),
    ("GET", "/api/vectors/{n}/export"),
    ("GET", "/api/jobs/{n}"),
    ("POST", "/api/jobs/{n}/cancel"),
    ("POST", "/api/jobs/{n}/retry"),
    ("GET", "/api/jobs/{n}/events"),
    ("GET", "/api/conversations/{n}"),
    ("POST", "/api/conversations/{n}/regenerate"),
    ("POST", "/api/conversations/{n}/stop"),
    ("GET", "/api/conversations/{n}/stream"),
    ("GET", "/api/conversations/{n}/export"),
    ("GET", "/api/generations?vector_id={n}"),
    ("GET", "/api/generations?run_id={n}"),
    ("GET", "/api/generations?offset={n}"),
    ("GET", "/api/runs?offset={n}"),
    ("GET", "/api/jobs?offset={n}"),
    ("GET", "/api/conversations?offset={n}"),
    ("GET", "/api/export/vectors.csv?run_id={n}"),
    ("GET", "/api/export/generations.jsonl?run_id={n}"),
    ("GET", "/runs/{n}"),
    ("GET", "/runs/{n}/live"),
    ("GET", "/runs/{n}/gallery"),
    ("GET", "/runs/{n}/map.json"),
    ("GET", "/runs/{n}/chain.json"),
    ("GET", "/runs/{n}/label"),
    ("GET", "/runs/calibrate/{n}"),
    ("GET", "/vectors/{n}"),
    ("GET", "/vectors/{n}/scales"),
    ("GET", "/chat/{n}"),
    ("POST", "/jobs/{n}/cancel"),
]


@pytest.mark.parametrize(("method", "route"), ID_ROUTES)
def test_ids_past_64_bits_are_refused(client: TestClient, method: str, route: str) -> None:
    message = refused(client, method, route.format(n=BIG))
    assert "less than 9223372036854775808" in message
    # The largest id SQLite holds is merely unknown (or matches nothing).
    r = client.request(method, route.format(n=SAFE))
    assert r.status_code in (200, 404), (route, r.status_code, r.text[:300])


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/generations", {"prompt": "hi", "vector_id": BIG}),
        ("/api/generations", {"prompt": "hi", "seed": BIG}),
        ("/api/runs", {"prompts": ["hi"], "seed": BIG}),
        ("/api/runs", {"prompts": ["hi"], "priority": BIG}),
        ("/api/chains", {"vector_id": BIG}),
        ("/api/sample-jobs", {"vector_ids": [BIG], "prompts": ["hi"]}),
        ("/api/labelings", {"label_id": BIG, "vector_id": 1}),
        ("/api/notes", {"vector_id": BIG, "text": "x"}),
        ("/api/conversations", {"vector_id": BIG}),
    ],
)
def test_body_ids_past_64_bits_are_refused(client: TestClient, url: str, body: dict[str, Any]) -> None:
    client.cookies.set("steerscope_author", "mallory")
    assert "less than 9223372036854775808" in refused(client, "POST", url, json=body)


def test_one_seed_rule_everywhere(client: TestClient) -> None:
    for url, body in [
        ("/api/runs", {"prompts": ["hi"], "seed": -1}),
        ("/api/generations", {"prompt": "hi", "seed": -1}),
        ("/api/sample-jobs", {"vector_ids": [1], "prompts": ["hi"], "seed": -1}),
        ("/api/chains", {"vector_id": 1, "seed": -1}),
    ]:
        assert "seed: must be at least 0" in refused(client, "POST", url, json=body)


def test_unicode_digits_and_lookalikes_are_refused(client: TestClient, vector: dict[str, Any]) -> None:
    run = vector["run_id"]
    assert "label" in refused(client, "GET", f"/runs/{run}/gallery?label=²")
    for fake in ("²", "٣", "+1", "1_0", " 1"):
        message = refused(client, "GET", f"/runs/{run}/gallery", params={"label": fake})
        assert f"label: must be a whole number, got {fake!r}" in message
    assert "block" in refused(
        client, "POST", "/api/imports", files={"file": ("v.safetensors", b"x" * 16)}, data={"block": "²"}
    )
    assert "n must be a whole number" in refused(client, "POST", f"/runs/{run}/compose", data={"n": "²"})
    message = refused(client, "POST", "/api/notes", json={"vector_id": True, "text": "x"})
    assert "not true or false" in message


def test_control_characters_in_a_search_are_left_out(
    client: TestClient, vector: dict[str, Any], conversation: int
) -> None:
    for q in ("\x00", "a\x00b \x1b[31m", '"\x00" NEAR(', "\x7f"):
        assert client.get(f"/runs/{vector['run_id']}/gallery", params={"q": q}).status_code == 200, q
        r = client.get(f"/chat/{conversation}/search", params={"q": q})
        assert r.status_code == 200, q


def test_a_conversation_checks_its_model_like_a_run(client: TestClient) -> None:
    message = refused(client, "POST", "/api/conversations", json={"model": "no/such-model"})
    assert "cannot load model 'no/such-model'" in message
    refused(client, "POST", "/api/conversations", json={"model": "../../../../etc"})
    assert "control characters" in refused(client, "POST", "/api/conversations", json={"model": "a\x00b"})


def test_lengths_are_capped(client: TestClient, vector: dict[str, Any], conversation: int) -> None:
    client.cookies.set("steerscope_author", "mallory")
    message = refused(client, "POST", "/api/conversations", json={"title": "t" * 1_000_000})
    assert "title: must be at most 200 characters" in message
    message = refused(client, "POST", "/api/notes", json={"vector_id": vector["id"], "text": "n" * 20_001})
    assert "text: must be at most 20000 characters" in message
    message = refused(client, "POST", "/api/runs", json={"prompts": ["p"] * 257})
    assert "prompts: must have at most 256 items" in message
    message = refused(
        client, "POST", f"/api/conversations/{conversation}/messages", json={"content": "m" * 20_001}
    )
    assert "content: must be at most 20000 characters" in message
    r = client.post("/labels", data={"name": "x" * 101})
    assert r.status_code == 422
    error = BeautifulSoup(r.text, "html.parser").select_one(".error")
    assert error is not None and error.get_text(strip=True) == "name: must be at most 100 characters"


def test_unknown_runs_are_404_everywhere(client: TestClient) -> None:
    for url in ("/runs/999999/live", "/api/runs/999999/export", "/api/export/vectors.csv?run_id=999999"):
        r = client.get(url)
        assert r.status_code == 404 and "no run 999999" in r.text, url


def test_no_open_redirect(client: TestClient) -> None:
    for target in ("//evil.example/x", "/\\evil.example", "https://evil.example/", "/\t/evil.example"):
        r = client.post("/author", data={"name": "eve", "next": target}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/labels", target
    r = client.post("/author", data={"name": "eve", "next": "/runs/1?x=1"}, follow_redirects=False)
    assert r.headers["location"] == "/runs/1?x=1"


def test_form_errors_are_plain_words(client: TestClient, vector: dict[str, Any]) -> None:
    r = client.post("/compare/cell", data={"vector_id": str(vector["id"]), "prompt": "hi", "seed": "-3"})
    text = BeautifulSoup(r.text, "html.parser").get_text(" ", strip=True)
    assert "seed: must be a whole number" in text and "validation error" not in text
    r = client.post("/labels", data={"name": "", "key": "3"})
    error = BeautifulSoup(r.text, "html.parser").select_one(".error")
    assert error is not None and error.get_text(strip=True) == "name: must not be empty"
    r = client.post("/labels", data={"name": "fine", "key": "²"})
    error = BeautifulSoup(r.text, "html.parser").select_one(".error")
    assert error is not None and "key must be a whole number" in error.get_text()


def safetensors_with(meta: dict[str, Any], rows: int = 1) -> bytes:
    header = {"format": "steerscope.vectors", "version": "1", "metadata": json.dumps(meta)}
    return save({"vectors": np.ones((rows, 64), np.float32)}, metadata=header)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"prompts": [{"a": 1}, None, 5], "block": 1}, "prompts.0: must be text"),
        ({"prompts": ["p"] * 100_000, "block": 1}, "prompts: must have at most 256 items"),
        ({"prompts": ["p" * 20_001], "block": 1}, "prompts.0: must be at most 20000 characters"),
        ({"block": -1}, "block: must be at least 0"),
        ({"blocks": [BIG]}, "blocks.0: must be less than"),
        ({"block": 1, "notes": {"deep": ["x"]}}, "field 'notes' must be text, a number or true/false"),
        ({"block": 1, "vectors": [{"prompts": "one"}]}, "vectors.0.prompts: must be a list"),
    ],
)
def test_imported_metadata_is_checked_field_by_field(
    client: TestClient, meta: dict[str, Any], message: str
) -> None:
    detail = refused(
        client, "POST", "/api/imports", files={"file": ("evil.safetensors", safetensors_with(meta))}
    )
    assert "evil.safetensors: the metadata is refused" in detail and message in detail, detail


def test_an_imported_file_within_limits_still_imports(client: TestClient) -> None:
    r = client.post(
        "/api/imports",
        files={
            "file": ("ok.safetensors", safetensors_with({"prompts": ["Hello."], "block": 1, "tool": "x"}))
        },
    )
    assert r.status_code == 201, r.text
    run = client.get(f"/api/runs/{r.json()['run_id']}").json()
    assert run["prompts"] == ["Hello."] and run["result"]["metadata"]["tool"] == "x"
    assert client.get(f"/runs/{run['id']}").status_code == 200
    assert client.get(f"/vectors/{r.json()['vector_ids'][0]}").status_code == 200
