"""Sweeps on the local worker: a small grid trains each cell beside its random twin at the same R;
a grid that cannot be trained is refused with a reason and writes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.models import Job, Run, Sweep
from tests.app.conftest import wait_for

SMALL = {"prompt_sets": [["Hi."]], "radii": [0.05, 0.1], "n_vectors": 2, "steps": 5}


def counts(client: TestClient) -> tuple[int, int, int]:
    with client.app.state.service.db.session() as session:  # type: ignore[attr-defined]
        return tuple(session.scalar(select(func.count()).select_from(t)) or 0 for t in (Sweep, Run, Job))  # type: ignore[return-value]


def test_a_small_sweep_trains_every_cell_beside_its_twin(client: TestClient) -> None:
    r = client.post("/api/sweeps", json=SMALL)
    assert r.status_code == 201, r.text
    sweep_id = r.json()["id"]
    grid: dict[str, Any] = wait_for(
        lambda: (g := client.get(f"/api/sweeps/{sweep_id}").json())["finished"] and g, 180, "the sweep"
    )
    [table] = grid["tables"]
    assert [row["radius"] for row in table["rows"]] == [0.05, 0.1]
    for row in table["rows"]:
        [cell] = row["cells"]
        learned, random = cell["learned"], cell["random"]
        assert learned["status"] == random["status"] == "succeeded"
        assert learned["vectors"] == random["vectors"] == 2
        assert learned["radius"] == pytest.approx(random["radius"])  # the twin trains at the same R
        assert learned["sample"] is not None and cell["unsteered"] is not None
    small, large = (row["cells"][0]["learned"]["radius"] for row in table["rows"])
    assert large == pytest.approx(2 * small)  # shares of the same residual norm
    page = BeautifulSoup(client.get(f"/sweeps/{sweep_id}").text, "html.parser")
    assert len(page.select("td.sweep-cell")) == 2
    assert not page.select("#sweep-grid[hx-trigger]")  # finished: the grid no longer polls
    listing = BeautifulSoup(client.get("/sweeps").text, "html.parser")
    assert listing.select_one(f"a[href='/sweeps/{sweep_id}']") is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"radii": []}, "give between 1 and 8 R values"),
        ({"radii": [0.1, 0.1]}, "repeat"),
        ({"radii": [0.1, -1.0]}, "finite number > 0"),
        ({"prompt_sets": []}, "give between 1 and 8 prompt sets"),
        (
            {
                "radii": [0.01 * i for i in range(1, 9)],
                "sources": [0, 1],
                "prompt_sets": [["a"], ["b"], ["c"]],
            },
            "at most 32 cells",
        ),
        ({"sources": [40]}, "out of range"),
        ({"n_vectors": 0}, "number of vectors"),
        ({"prompt_sets": [["   "]]}, "prompt"),
    ],
)
def test_a_grid_that_cannot_be_trained_is_refused_and_writes_nothing(
    client: TestClient, change: dict[str, Any], message: str
) -> None:
    before = counts(client)
    r = client.post("/api/sweeps", json={**SMALL, **change})
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    assert counts(client) == before


def test_the_form_starts_a_sweep_or_says_what_is_wrong(client: TestClient) -> None:
    form = {
        "prompt_sets": "Hi.\n\nTell me a story.",
        "radii": "0.05",
        "relative": "on",
        "n_vectors": "2",
        "steps": "5",
        "seed": "0",
        "sources": "",
        "model": "",
    }
    r = client.post("/sweeps/new", data={**form, "n_vectors": "two"}, follow_redirects=False)
    assert r.status_code == 422
    assert "whole number" in BeautifulSoup(r.text, "html.parser").get_text()
    r = client.post("/sweeps/new", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/sweeps/")
    grid = client.get(f"/api/sweeps/{r.headers['location'].rsplit('/', 1)[1]}").json()
    assert [t["prompts"] for t in grid["tables"]] == [["Hi."], ["Tell me a story."]]
