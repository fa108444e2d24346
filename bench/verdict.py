"""What a bench promises, checked in the same run: targets on its figures and the JSON line it ends with.

Every bench declares its targets once, in code, and ends with `report(...)`: the figures, then
`"targets": {name: true | false | null}` (null: the run did not measure that figure, e.g. a part
skipped by a flag) and `"target_rules"`: {name: "figure <= 2"} so that a reader of the line alone
(bench/table.py) can show what each verdict was against. A bench that ran to the end exits 0 even
when a target is missed; `bench/table.py` turns the verdicts into an exit status.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

# The machine's load when the bench started (this module is imported first thing) and ended:
# timings taken under a load above the core count are not comparable with quiet ones.
_LOAD_AT_START = os.getloadavg()[0]

Op = Literal["<=", ">=", "<", ">", "=="]
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Target:
    """`figure op value`, e.g. Target("page_p95_ratio", "<=", 2)."""

    figure: str  # a key of the bench's figures
    op: Op
    value: float | bool
    name: str = ""  # defaults to the figure; two targets on one figure need names of their own
    note: str = ""  # shown beside the rule, e.g. "new: not met yet"

    @property
    def key(self) -> str:
        return self.name or self.figure

    @property
    def rule(self) -> str:
        value = str(self.value).lower() if isinstance(self.value, bool) else f"{self.value:g}"
        rule = f"{self.figure} {self.op} {value}"
        return f"{rule} ({self.note})" if self.note else rule

    def met(self, figures: Mapping[str, Any]) -> bool | None:
        """Whether the figure meets the target; None when the run has no such figure."""
        found = figures.get(self.figure)
        if found is None:
            return None
        if isinstance(found, float) and math.isnan(found):
            return False  # a figure that could not be computed (0/0) meets nothing
        return bool(_OPS[self.op](found, self.value))


def verdicts(figures: Mapping[str, Any], targets: Sequence[Target]) -> dict[str, bool | None]:
    keys = [t.key for t in targets]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two targets share a name: {keys}")
    return {t.key: t.met(figures) for t in targets}


def report(bench: str, figures: Mapping[str, Any], targets: Sequence[Target]) -> dict[str, Any]:
    """Print the figures and their verdicts as one JSON object, the last line of stdout."""
    line = {
        "bench": bench,
        **{k: v for k, v in figures.items() if k != "bench"},
        "load_1m": [round(_LOAD_AT_START, 2), round(os.getloadavg()[0], 2)],  # at start, at end
        "cores": os.cpu_count(),
        "targets": verdicts(figures, targets),
        "target_rules": {t.key: t.rule for t in targets},
    }
    print(json.dumps(line), flush=True)
    return line
