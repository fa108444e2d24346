"""`python -m engine score | cluster | detect`: the discovery tools on a JSONL of completions.

Input rows are what `python -m engine train --samples` writes: {"vector", "prompt", "text"}; a row
whose vector is null is the unsteered completion of its prompt (or give "unsteered" in each row);
"random": true marks a random-twin vector's completion (the baseline for beyond_random).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.discovery.behaviours import DISTANCE
from engine.discovery.findings import Completion, organize
from engine.errors import EngineError


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EngineError(f"cannot read {path}: {exc.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EngineError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("prompt"), str)
            or not isinstance(row.get("text"), str)
        ):
            raise EngineError(f"{path}:{n}: a row needs a prompt and a text (strings)")
        rows.append(row)
    if not rows:
        raise EngineError(f"{path} holds no rows")
    return rows


def completions(rows: list[dict[str, Any]]) -> tuple[list[int], list[Completion]]:
    """The steered rows (their indices) as completions beside their prompt's unsteered text."""
    unsteered = {r["prompt"]: r["text"] for r in rows if r.get("vector") is None and "unsteered" not in r}
    picked, out = [], []
    for i, r in enumerate(rows):
        if r.get("vector") is None and "unsteered" not in r:
            continue
        partner = r.get("unsteered", unsteered.get(r["prompt"]))
        if not isinstance(partner, str):
            raise EngineError(
                f"row {i + 1}: no unsteered completion of {r['prompt']!r} (a row with vector null)"
            )
        vector = r.get("vector", i)
        key = f"random:{vector}" if r.get("random") else vector
        out.append(Completion(key, r["prompt"], r["text"], partner, bool(r.get("random"))))
        picked.append(i)
    if not out:
        raise EngineError("no steered completions in the file (rows with a vector)")
    return picked, out


def _write(path: Path | None, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if path is None:
        sys.stdout.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def cmd_score(args: argparse.Namespace) -> None:
    """Scores, flags and behaviours of every steered row; behaviours summarized on stderr."""
    from engine.cli.commands import _load
    from engine.discovery.embedder import Embedder
    from engine.discovery.findings import find

    rows = read_rows(args.samples)
    picked, items = completions(rows)
    lm = _load(args)
    found = find(lm, Embedder(), items, distance=args.distance)
    _annotate(rows, picked, found)
    _write(args.out, rows)
    _summary(found)


def cmd_cluster(args: argparse.Namespace) -> None:
    """Behaviours of already scored rows (their flags are kept); only the embedding model is loaded."""
    from engine.discovery.embedder import Embedder
    from engine.discovery.scores import Scores

    rows = read_rows(args.samples)
    picked, items = completions(rows)
    embedded = Embedder().encode([c.text for c in items])
    scores = [
        Scores(
            effect=float(rows[i].get("effect") or 0.0),
            fluency=float(rows[i].get("fluency") or 0.0),
            repetition=float(rows[i].get("repetition") or 0.0),
            beyond_random=rows[i].get("beyond_random"),
            flag=str(rows[i].get("flag") or ""),
            embedding=embedded[n],
        )
        for n, i in enumerate(picked)
    ]
    found = organize(items, scores, distance=args.distance)
    _annotate(rows, picked, found)
    _write(args.out, rows)
    _summary(found)


def _annotate(rows: list[dict[str, Any]], picked: list[int], found: Any) -> None:
    names = {b.index: b.name for b in found.behaviours}
    for n, i in enumerate(picked):
        rows[i].update(found.scores[n].to_dict())
        rows[i]["behaviour"] = names[found.behaviour_of[n]]


def _summary(found: Any) -> None:
    for b in found.behaviours:
        print(
            f"{b.size:4d} completions {len(b.vectors):4d} vectors {len(b.random_vectors):4d} random {b.name}",
            file=sys.stderr,
        )
    print(f"discovery curve: {json.dumps(found.curve)}", file=sys.stderr)


def cmd_detect(args: argparse.Namespace) -> None:
    """A detector's score on every row: a regular expression's match, or a judge model's P(yes)."""
    from engine.discovery.detectors import Detector, detect

    if (args.regex is None) == (args.judge is None):
        raise EngineError("give either --regex PATTERN or --judge QUESTION")
    detector = Detector("regex", args.regex) if args.regex is not None else Detector("judge", args.judge)
    rows = read_rows(args.samples)
    lm = None
    if detector.kind == "judge":
        from engine.cli.commands import _load

        lm = _load(args)
    for row, value in zip(rows, detect(detector, [r["text"] for r in rows], lm), strict=True):
        row["detector"] = value
    _write(args.out, rows)


def add_parsers(sub: Any, add_model_args: Any) -> None:
    score = sub.add_parser("score", help="score, flag and group a JSONL of steered completions")
    add_model_args(score)
    score.add_argument("--samples", type=Path, required=True, help="JSONL from `train --samples` or alike")
    score.add_argument("--out", type=Path, help="JSONL with scores and behaviours (default: stdout)")
    score.add_argument("--distance", type=float, default=DISTANCE, help="clustering cosine distance")

    clu = sub.add_parser("cluster", help="group scored completions into behaviours (no LM needed)")
    clu.add_argument("--samples", type=Path, required=True)
    clu.add_argument("--out", type=Path)
    clu.add_argument("--distance", type=float, default=DISTANCE)

    det = sub.add_parser("detect", help="a regex or a judge model's yes/no answer on every completion")
    add_model_args(det)
    det.add_argument("--samples", type=Path, required=True)
    det.add_argument("--out", type=Path)
    det.add_argument("--regex", help="a regular expression (case-insensitive)")
    det.add_argument("--judge", help="a yes/no question put to the model (--model) about each completion")


COMMANDS = {"score": cmd_score, "cluster": cmd_cluster, "detect": cmd_detect}
