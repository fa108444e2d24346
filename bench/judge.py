"""How good a judge the embedded model is: its yes/no scores on the hand-labelled completions of
tests/fixtures/flags_labelled.jsonl, against what is known of them, as ROC AUC (0.5 = chance).

- "Is this text gibberish or nonsense?" against the hand label `gibberish`;
- "Is this text a poem?" against the prompt that asked for a poem (a surface question).
Last line (bench/verdict.py): the AUCs and the verdict on `auc_gibberish` (target >= 0.7; the poem
question has no target: the 135M judge is known to answer it at chance).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.* importable
from bench.verdict import Target, report
from engine.discovery.detectors import judge
from engine.models import load_model

TARGETS = (Target("auc_gibberish", ">=", 0.7),)
FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "flags_labelled.jsonl"
QUESTIONS = {
    "gibberish": ("Is this text gibberish or nonsense?", lambda r: r["label"] == "gibberish"),
    "poem": ("Is this text a poem?", lambda r: "poem" in r["prompt"]),
}


def auc(scores: list[float], truth: list[bool]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos = [s for s, t in zip(scores, truth, strict=True) if t]
    neg = [s for s, t in zip(scores, truth, strict=True) if not t]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default", help="the judge: 'default' or a local chat model")
    parser.add_argument("--quick", action="store_true", help="every other row")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    rows = rows[::2] if args.quick else rows
    lm = load_model(args.model, device="cpu")
    result: dict[str, object] = {"model": args.model, "rows": len(rows)}
    for name, (question, truth) in QUESTIONS.items():
        scores = judge(lm, question, [r["text"] for r in rows])
        result[f"auc_{name}"] = round(auc(scores, [truth(r) for r in rows]), 3)
        print(f"{question} AUC {result[f'auc_{name}']}", file=sys.stderr)
    report("judge", result, TARGETS)


if __name__ == "__main__":
    main()
