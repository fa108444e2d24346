"""The tree stays readable: no module of the product or its benches grows past what a reader takes in
at one sitting; a module that does is split where it holds two ideas."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400
CHECKED = ("engine", "app", "bench")


def test_no_module_is_over_400_lines() -> None:
    modules = [p for folder in CHECKED for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(modules) > 100, "the scan found the packages"
    long = {
        str(p.relative_to(ROOT)): n
        for p in modules
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules (lines): {long}"
