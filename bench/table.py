"""The verdicts of a `make bench` run as one table: bench, figure, value, target, verdict.

    python bench/table.py bench/results

Reads, for each bench, `<name>.out` (its stdout: the last line is its JSON, bench/verdict.py) and
`<name>.rc` (its exit status). A bench that exited non-zero or printed no JSON is a crash. Exit
status: 0 when every bench finished and met every target it measured, 1 otherwise. A target the run
did not measure (null) is shown as "not measured" and fails nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except json.JSONDecodeError:
                return None
            return found if isinstance(found, dict) else None
    return None


def rows_of(name: str, out: str, rc: int | None) -> tuple[list[list[str]], bool]:
    """The table rows of one bench and whether it passed."""
    found = last_json(out)
    if rc not in (0, None) or found is None:
        why = f"exit status {rc}" if rc not in (0, None) else "no JSON line"
        return [[name, "-", "-", "-", f"CRASHED ({why})", ""]], False
    targets: dict[str, bool | None] = found.get("targets") or {}
    rules: dict[str, str] = found.get("target_rules") or {}
    start, end = found.get("load_1m") or ("?", "?")
    load = f"{start} -> {end}"
    if not targets:
        return [[name, "-", "-", "-", "no targets", load]], True
    rows, passed = [], True
    for key, verdict in targets.items():
        rule = rules.get(key, key)
        figure = rule.split(" ", 1)[0]
        value = found.get(figure)
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
        word = {True: "ok", False: "FAIL", None: "not measured"}[verdict]
        passed = passed and verdict is not False
        rows.append([name, key, shown, rule.split(" ", 1)[1] if " " in rule else "", word, load])
        load = ""  # once per bench
    return rows, passed


def render(rows: list[list[str]]) -> str:
    header = ["bench", "figure", "value", "target", "verdict", "load (1 min, start -> end)"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the folder `make bench` wrote (bench/results)")
    args = parser.parse_args()
    outs = sorted(args.results.glob("*.out"), key=lambda p: p.stat().st_mtime)
    if not outs:
        print(f"no bench output in {args.results}", file=sys.stderr)
        return 1
    rows: list[list[str]] = []
    failed: list[str] = []
    for out in outs:
        rc_file = out.with_suffix(".rc")
        rc = int(rc_file.read_text().strip() or 0) if rc_file.is_file() else None
        bench_rows, passed = rows_of(out.stem, out.read_text(encoding="utf-8", errors="replace"), rc)
        rows += bench_rows
        if not passed:
            failed.append(out.stem)
    print(render(rows))
    print(
        f"\n{len(outs) - len(failed)} of {len(outs)} benches passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
