"""The automatic flags against completions of the embedded model labelled by hand (156 of them; how
they were made: tests/fixtures/make_flags_set.py). The thresholds in engine/discovery/flags.py were chosen on
the even rows; the agreement asked for holds on the odd rows (held out) and on the whole."""

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
    assert len(rows) >= 150 and all(r["label"] in AS_FLAG for r in rows)
    inputs = [ScoreInput(r["prompt"], r["text"], r["unsteered"], r["kind"] == "random") for r in rows]
    flags = [s.flag for s in score(embedded, Embedder(), inputs)]
    agree = [f == AS_FLAG[r["label"]] for f, r in zip(flags, rows, strict=True)]
    tuned, held_out, whole = (sum(a) / len(a) for a in (agree[::2], agree[1::2], agree))
    assert whole >= 0.8, f"flags agree on {whole:.0%} (tuning rows {tuned:.0%}, held-out rows {held_out:.0%})"
    assert held_out >= 0.75, f"held-out rows {held_out:.0%}"
