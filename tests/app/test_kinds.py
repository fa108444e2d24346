"""The kinds table is the one place a run kind is written: nothing else spells one as a string,
and every entry points at things that exist (its task module, its page piece, its settings)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from app import kinds, schemas
from app.executor import tasks
from app.kinds import Kind
from app.settings import ROOT

KIND_NAMES = {k.value for k in Kind}
TABLE = ROOT / "app" / "kinds.py"


def _strings(node: ast.AST) -> list[str]:
    """The string constants of a node, looking into tuples, lists and sets."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for e in node.elts for s in _strings(e)]
    return []


def _name(node: ast.AST) -> str:
    """`x` of `x` or `a.x`; "" for anything else."""
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def _names_a_kind(node: ast.AST) -> bool:
    """`kind`, `x.kind`, `method`, `x.method`: what a run kind is compared with."""
    return _name(node) in ("kind", "method")


def kind_literals(source: str) -> list[tuple[int, str]]:
    """(line, kind) of every run kind written as a string in Python source: compared with a kind,
    passed as `kind=`, checked with `validate(...)`, assigned to a *KIND* name, or two or more
    kinds together in a tuple, list, set, Literal or as dict keys (a hand-made table of kinds)."""
    found: list[tuple[int, str]] = []

    def add(line: int, values: list[str]) -> None:
        found.extend((line, v) for v in values if v in KIND_NAMES)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_names_a_kind(o) for o in operands):
                for o in operands:
                    add(node.lineno, _strings(o))
        elif isinstance(node, ast.keyword) and node.arg in ("kind", "method"):
            add(node.value.lineno, _strings(node.value))
        elif isinstance(node, ast.Call) and _name(node.func) == "validate" and node.args:
            add(node.lineno, _strings(node.args[0]))
        elif isinstance(node, ast.Assign) and any("KIND" in _name(t) for t in node.targets):
            add(node.lineno, _strings(node.value))
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            values = [v for v in _strings(node) if v in KIND_NAMES]
            if len(values) >= 2:
                add(node.lineno, values)
        elif isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in KIND_NAMES]
            if len(keys) >= 2:
                add(node.lineno, keys)
    return sorted(set(found))


TEMPLATE_EXPRESSION = re.compile(r"\{[{%].*?[%}]\}", re.S)
QUOTED = re.compile(r"""["']([a-z_]+)["']""")
# A kind or method compared with something, or used to look something up.
COMPARES_KIND = re.compile(
    r"(kind|method)\s*(==|!=|\bin\b|\bnot in\b)|(==|!=|\bin\b)\s*[\w.]*(kind|method)\b|\.get\([\w.]*kind"
)


def template_kind_literals(text: str) -> list[tuple[int, str]]:
    """(line, kind) of a kind quoted inside a template expression that compares a `kind` or a
    `method` with something, or looks one up."""
    found = []
    for match in TEMPLATE_EXPRESSION.finditer(text):
        expression = match.group(0)
        if not COMPARES_KIND.search(expression):
            continue
        line = text.count("\n", 0, match.start()) + 1
        found += [(line, q) for q in QUOTED.findall(expression) if q in KIND_NAMES]
    return found


def test_the_scanner_finds_kinds_written_the_ways_they_used_to_be() -> None:
    written = """
if run.kind == "chain": pass
GALLERY_KINDS = ("melbo", "random", "dct")
create_run(session, kind="compose")
service.validate("rpath", spec)
KIND = "scale_sweep"
NAMES = {"rpath": "R-path", "search": "Search"}
method: Literal["melbo", "random"] = "melbo"
"""
    assert {k for _, k in kind_literals(written)} == {
        "chain",
        "melbo",
        "random",
        "dct",
        "compose",
        "rpath",
        "scale_sweep",
        "search",
    }
    not_kinds = 'row = {"generation_id": 1, "score": 0.5}\nif message["type"] == "generate": pass\n'
    assert kind_literals(not_kinds) == []
    template = (
        '<h1>{% if run.kind == "chain" %}Chain{% endif %}</h1>{{ {"score": "scoring"}.get(job.kind) }}'
        '<option {% if values.method == "dct" %}selected{% endif %}>'
    )
    assert [k for _, k in template_kind_literals(template)] == ["chain", "score", "dct"]
    assert template_kind_literals('{{ "adapter" if kind_info(run.kind).adapters else "vector" }}') == []


def test_no_run_kind_is_written_outside_the_kinds_table() -> None:
    offenders = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        if path == TABLE:
            continue
        for line, kind in kind_literals(path.read_text()):
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {kind!r}")
    for path in sorted((ROOT / "templates").rglob("*.html")):
        for line, kind in template_kind_literals(path.read_text()):
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {kind!r}")
    assert offenders == [], "run kinds written outside app/kinds.py (use Kind or the table's fields)"


def test_every_kind_has_an_entry_and_its_pieces_exist() -> None:
    table = kinds.table()
    assert set(table) == set(Kind)
    for kind, info in table.items():
        assert info.kind == kind
        if info.task is not None:
            assert callable(tasks.task(info.task)), f"{kind}: task {info.task} has no run()"
        if info.page:
            assert (ROOT / "templates" / info.page).is_file(), f"{kind}: no template {info.page}"
        if info.twin is not None:
            assert table[info.twin].counted == info.counted, f"{kind}: its twin is compared vector for vector"
        if info.command:
            assert info.launch is not None and info.settings is not None, f"{kind}: a command needs both"


def test_the_run_form_offers_exactly_the_kinds_it_describes() -> None:
    methods = set(schemas.MelboCreate.model_fields["method"].annotation.__args__)  # type: ignore[union-attr]
    assert methods == {k for k, _ in kinds.methods()}
    assert methods == {k for k, info in kinds.table().items() if info.settings is schemas.MelboCreate}


@pytest.mark.parametrize("unknown", ["", "melbo2", "MELBO"])
def test_an_unknown_kind_is_a_bug_not_a_default(unknown: str) -> None:
    with pytest.raises(ValueError):
        kinds.of(unknown)


def test_every_kind_with_a_route_is_started_there_from_its_settings(tmp_path: Path) -> None:
    from app.main import create_app
    from app.settings import Settings

    paths = create_app(Settings(data_dir=tmp_path)).openapi()["paths"]
    routed = [info for info in kinds.table().values() if info.route]
    assert routed, "the table names the routes that start runs"
    for info in routed:
        post = paths[f"/api/{info.route}"]["post"]
        schema = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert info.settings is not None and schema.endswith(f"/{info.settings.__name__}")
