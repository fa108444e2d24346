"""The documentation holds together: links resolve, the README stays short, nothing points outside."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200
# Split so that this file does not name what it looks for.
OUTSIDE = ("ALGORITHMS" + ".md", ".." + "/shared")
PROJECT_SUFFIXES = {".md", ".py", ".html", ".toml"}

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where a link is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    return [target for target in LINK.findall(prose(path.read_text())) if "://" not in target]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in links(doc):
        if target.startswith("mailto:"):
            continue
        file_part, _, anchor = target.partition("#")
        goal = (doc.parent / file_part).resolve() if file_part else doc
        if not goal.exists():
            broken.append(f"{target}: no file {goal}")
        elif anchor and goal.suffix == ".md" and anchor not in anchors(goal):
            broken.append(f"{target}: no heading #{anchor} in {goal.relative_to(ROOT)}")
    assert broken == [], f"broken links in {doc.relative_to(ROOT)}"


def test_the_docs_link_to_each_other() -> None:
    """Every page under docs/ is reachable from the README, directly or through another page."""
    reached, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for target in links(page):
            goal = (page.parent / target.partition("#")[0]).resolve()
            if goal.suffix == ".md" and goal.exists():
                todo.append(goal)
    assert set(DOCS) - reached == set(), "pages no link leads to"


def test_the_readme_reads_in_five_minutes() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < README_MAX_LINES


def test_the_two_set_up_commands_open_the_readme() -> None:
    head = (ROOT / "README.md").read_text().splitlines()[:6]
    assert any(line.strip().startswith("make run") for line in head)
    assert any(line.strip().startswith("make test") for line in head)


def project_files() -> list[Path]:
    """Our own files: hidden folders (.venv, .git, the tools' caches) are left out."""
    found = []
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        found += [Path(folder) / name for name in sorted(names) if Path(name).suffix in PROJECT_SUFFIXES]
    return found


def test_no_project_file_points_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {needle}"
        for path in project_files()
        for needle in OUTSIDE
        if needle in path.read_text(errors="replace")
    ]
    assert offenders == [], "files that cite something outside the repository:\n" + "\n".join(offenders)
