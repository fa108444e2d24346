"""Property-based fuzzing of the whole JSON API from its own OpenAPI schema.

Schemathesis turns every operation's schema into Hypothesis strategies, both for requests that fit
the schema and for requests that break it, and they go over real HTTP to a real server whose real
worker (the tiny model) validates and generates. Every answer must be below 500, and a request that
was refused (4xx) must have written nothing: the rows of every table are counted around each call.

Jobs accepted here stay queued (this server claims only jobs of its own owner), so that nothing
but the requests writes while they are checked; training is tested elsewhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import hypothesis
import numpy as np
import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase
from safetensors.numpy import save
from schemathesis import GenerationMode
from sqlalchemy import func, select

from app.main import create_app
from app.models import Base
from app.service import Service
from tests.app.conftest import make_settings
from tests.live import LiveServer, free_port


def internal_error(response: requests.Response) -> bool:
    """The answer says "internal error", and not only because the request said it (a fuzzed path
    or field the refusal quotes back)."""
    sent = unquote(response.request.url or "").encode() + as_bytes(response.request.body)
    return b"internal error" in response.content and b"internal error" not in sent


def as_bytes(body: Any) -> bytes:
    return body if isinstance(body, bytes) else str(body or "").encode()


EXAMPLES = 22  # per operation and generation mode (fitting, breaking): >= 1,000 requests in all
TIMEOUT = 60.0
# Server-sent events streams stay open while their job or reply runs; they are not JSON routes.
STREAMS = {"GET /api/jobs/{job_id}/events", "GET /api/conversations/{conversation_id}/stream"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[tuple[str, FastAPI]]:
    settings = make_settings(
        tmp_path_factory.mktemp("fuzz") / "data",
        tiny_dir,
        max_vectors=4,
        max_steps=20,
        max_new_tokens=8,
        gallery_tokens=4,
    )
    app = create_app(settings, service=Service(settings, owner="fuzz", claim_any=False))
    with LiveServer(app, free_port()) as live:
        yield live.url, app


def row_counts(app: FastAPI) -> dict[str, int]:
    with app.state.service.db.session() as session:
        return {
            t.name: int(session.scalar(select(func.count()).select_from(t)) or 0)
            for t in Base.metadata.sorted_tables
        }


def seed_rows(url: str, http: requests.Session) -> None:
    """Something for ids to find: an imported vector (run 1, vector 1) and a conversation."""
    data = save(
        {"vectors": np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64)},
        metadata={"format": "steerscope.vectors", "version": "1", "metadata": '{"prompts": ["Hi."]}'},
    )
    r = http.post(
        f"{url}/api/imports", files={"file": ("v.safetensors", data)}, data={"block": "1"}, timeout=TIMEOUT
    )
    assert r.status_code == 201, r.text
    assert http.post(f"{url}/api/conversations", json={}, timeout=TIMEOUT).status_code == 201


def test_the_json_api_never_answers_5xx_and_refusals_write_nothing(server: tuple[str, FastAPI]) -> None:
    url, app = server
    http = requests.Session()
    http.cookies.set("steerscope_author", "fuzz")  # labels and notes need a name
    seed_rows(url, http)
    schema = schemathesis.openapi.from_dict(app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    tried: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    def check(case: Any) -> None:
        before = row_counts(app)
        response = case.call(base_url=url, session=http, timeout=TIMEOUT)
        tried[case.operation.label] += 1
        statuses[response.status_code] += 1
        problem = ""
        if response.status_code >= 500:
            problem = f"answered {response.status_code}"
        elif internal_error(response):  # a failure of ours, whatever its status says
            problem = f"answered {response.status_code} with an internal error"
        elif response.status_code >= 400 and row_counts(app) != before:
            problem = f"refused with {response.status_code} but wrote rows"
        if problem:
            failures.append(
                f"{case.operation.label} {problem}: {case.as_curl_command()}\n{response.content[:300]!r}"
            )
        assert not problem, failures[-1]

    for operation in operations:
        if operation.label in STREAMS:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same requests on every run: a failure is reproducible
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            )(hypothesis.given(case=operation.as_strategy(generation_mode=mode))(check))
            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # An operation without parameters or body has no way to break its schema.
                assert mode is GenerationMode.NEGATIVE, operation.label

    total = sum(tried.values())
    refused = sum(n for status, n in statuses.items() if 400 <= status < 500)
    fuzzed = {op.label for op in operations} - STREAMS
    print(f"fuzz: {total} requests over {len(tried)} operations; statuses {dict(sorted(statuses.items()))}")
    assert not failures
    assert set(tried) == fuzzed, fuzzed - set(tried)  # every JSON route was called
    assert total >= 1000 and refused > 0 and sum(statuses.values()) - refused > 0


def integer_schemas(
    node: Any, where: str, components: dict[str, Any]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every integer in a piece of OpenAPI schema, with where it sits (references followed)."""
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[1]
            yield from integer_schemas(components[name], f"{where}<{name}>", components)
            return
        if node.get("type") == "integer":
            yield where, node
        for key, value in node.items():
            yield from integer_schemas(value, f"{where}.{key}", components)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from integer_schemas(value, f"{where}[{i}]", components)


def test_every_integer_the_api_takes_fits_sqlite(server: tuple[str, FastAPI]) -> None:
    """The schema itself says 0 <= n < 2**63 for every integer a request can carry (ids, offsets,
    seeds, priorities, counts), so no value can overflow SQLite's 64-bit INTEGER."""
    _, app = server
    spec = app.openapi()
    components = spec.get("components", {}).get("schemas", {})
    seen = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            taken = {"parameters": operation.get("parameters", []), "body": operation.get("requestBody", {})}
            for where, schema in integer_schemas(taken, f"{method.upper()} {path}", components):
                seen += 1
                low = schema.get("minimum", schema.get("exclusiveMinimum"))
                high = schema.get("exclusiveMaximum", (schema.get("maximum") or 2**63) + 1)
                assert low is not None and low >= 0, f"{where} takes negative numbers: {schema}"
                assert high <= 2**63, f"{where} takes numbers past 2**63 - 1: {schema}"
    assert seen > 30
