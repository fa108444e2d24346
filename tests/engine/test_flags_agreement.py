"""The automatic flags against completions of the embedded model labelled by hand (how they were
made: tests/fixtures/README.md). Thresholds and traits were chosen on the rows marked "part":
"tuning"; the agreement asked for holds on the rows marked "held-out", which nobody tuned on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.discovery.embedder import Embedder
from engine.discovery.scores import ScoreInput, score
from engine.models import LoadedModel

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "flags_labelled.jsonl"
AS_FLAG = {"unchanged": "unchanged", "rephrase": "rephrase", "gibberish": "gibberish", "changed": ""}


@pytest.mark.slow
def test_flags_agree_with_hand_labels(embedded: LoadedModel) -> None:
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 300 and all(r["label"] in AS_FLAG for r in rows)
    assert all(r["second_label"] in AS_FLAG for r in rows if "second_label" in r)
    assert {r["part"] for r in rows} == {"tuning", "held-out"}
    inputs = [ScoreInput(r["prompt"], r["text"], r["unsteered"], r["kind"] == "random") for r in rows]
    flags = [s.flag for s in score(embedded, Embedder(), inputs)]
    agree = [f == AS_FLAG[r["label"]] for f, r in zip(flags, rows, strict=True)]
    held = [a for a, r in zip(agree, rows, strict=True) if r["part"] == "held-out"]
    tuned = [a for a, r in zip(agree, rows, strict=True) if r["part"] == "tuning"]
    recall = [
        f == ""
        for f, r in zip(flags, rows, strict=True)
        if r["part"] == "held-out" and r["label"] == "changed"
    ]
    figures = (
        f"held-out rows {sum(held) / len(held):.0%}, tuning rows {sum(tuned) / len(tuned):.0%}, "
        f"changed recall on held-out rows {sum(recall) / len(recall):.0%}"
    )
    assert sum(agree) / len(agree) >= 0.8, figures
    assert sum(held) / len(held) >= 0.75, figures
