"""Tabular exports (CSV and JSONL), streamed a batch of rows at a time so large tables never sit in
memory whole."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from operator import attrgetter
from typing import Any

from sqlalchemy import Select, select

from app.db import Database
from app.models import Behaviour, Generation, Label, Labeling, Vector
from app.responses import GENERATION_FIELDS

BATCH = 500

Columns = list[tuple[str, Callable[[Any], Any]]]

VECTOR_COLUMNS: Columns = [
    ("id", lambda v: v.id),
    ("run_id", lambda v: v.run_id),
    ("index", lambda v: v.index),
    ("parent_id", lambda v: v.parent_id),
    ("block", lambda v: v.block),
    ("width", lambda v: v.width),
    ("norm", lambda v: v.norm),
    ("objective", lambda v: v.objective),
    ("kl", lambda v: v.kl),
    ("interest", lambda v: v.interest),
    ("rank", lambda v: v.rank),
    ("behaviour_id", lambda v: v.behaviour_id),
    ("working_scale", lambda v: v.working_scale),
    ("broken_at", lambda v: v.broken_at),
    ("created_at", lambda v: v.created_at.isoformat() + "Z"),
]
GENERATION_COLUMNS: Columns = [(name, attrgetter(name)) for name in GENERATION_FIELDS]
LABEL_COLUMNS: Columns = [
    ("id", lambda row: row[0].id),
    ("label", lambda row: row[1].name),
    ("vector_id", lambda row: row[0].vector_id),
    ("generation_id", lambda row: row[0].generation_id),
    ("author", lambda row: row[0].author),
    ("created_at", lambda row: row[0].created_at.isoformat() + "Z"),
]


BEHAVIOUR_COLUMNS: Columns = [
    *[(name, attrgetter(name)) for name in ("id", "run_id", "index", "kind", "name", "subtitle", "trait")],
    ("words", lambda b: " ".join(b.words)),
    *[(name, attrgetter(name)) for name in ("size", "n_vectors", "n_random", "exemplar_id")],
]


def behaviours_query(run_id: int | None) -> Select[Any]:
    query = select(Behaviour).order_by(Behaviour.run_id, Behaviour.index)
    return query if run_id is None else query.where(Behaviour.run_id == run_id)


def vectors_query(run_id: int | None) -> Select[Any]:
    query = select(Vector).order_by(Vector.id)
    return query if run_id is None else query.where(Vector.run_id == run_id)


def generations_query(run_id: int | None) -> Select[Any]:
    query = select(Generation).order_by(Generation.id)
    if run_id is None:
        return query
    return query.where(Generation.vector_id.in_(select(Vector.id).where(Vector.run_id == run_id)))


def labels_query(run_id: int | None) -> Select[Labeling, Label]:
    query = select(Labeling, Label).join(Label, Labeling.label_id == Label.id).order_by(Labeling.id)
    if run_id is None:
        return query
    of_run = select(Vector.id).where(Vector.run_id == run_id)
    mine = select(Generation.id).where(Generation.vector_id.in_(of_run))
    return query.where(Labeling.vector_id.in_(of_run) | Labeling.generation_id.in_(mine))


def rows(
    db: Database, query: Select[Any], columns: Columns, *, whole_rows: bool = False
) -> Iterator[dict[str, Any]]:
    """The query's rows as dicts, read in batches on a session of their own."""
    with db.sessions() as session:
        result = session.execute(query.execution_options(yield_per=BATCH))
        for row in result:
            item = row if whole_rows else row[0]
            yield {name: get(item) for name, get in columns}


def cell(value: Any) -> Any:
    """A CSV cell: blank for None, JSON for a list or a mapping (a generation's typed changes)."""
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, list | dict) else value


def as_csv(records: Iterator[dict[str, Any]], columns: Columns) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([name for name, _ in columns])
    for n, record in enumerate(records, 1):
        writer.writerow([cell(record[name]) for name, _ in columns])
        if n % BATCH == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def as_jsonl(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    for record in records:
        yield json.dumps(record) + "\n"


TABLES: dict[str, tuple[Callable[[int | None], Any], Columns, bool]] = {
    "vectors": (vectors_query, VECTOR_COLUMNS, False),
    "generations": (generations_query, GENERATION_COLUMNS, False),
    "labels": (labels_query, LABEL_COLUMNS, True),
    "behaviours": (behaviours_query, BEHAVIOUR_COLUMNS, False),
}


def stream(db: Database, table: str, fmt: str, run_id: int | None) -> Iterator[str]:
    query, columns, whole = TABLES[table]
    records = rows(db, query(run_id), columns, whole_rows=whole)
    return as_csv(records, columns) if fmt == "csv" else as_jsonl(records)
