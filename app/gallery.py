"""The gallery: a run's vectors as cards (completions beside the unsteered ones), sorted, filtered,
paginated, and the data behind the run's 2-D map."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Integer, column, false, func, select, text
from sqlalchemy.orm import Session

from app import geometry
from app.labels import fts_query
from app.models import Generation, Label, Labeling, Run, Vector

SORTS = {"index": Vector.index, "objective": Vector.objective, "kl": Vector.kl, "norm": Vector.norm}
PER_PAGE = 24


@dataclass
class Sample:
    steered: Generation
    unsteered: Generation | None


@dataclass
class Card:
    vector: Vector
    samples: list[Sample] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)


@dataclass
class Query:
    """What the user asked the gallery for; every field comes from the URL, so views can be shared."""

    sort: str = "index"
    desc: bool = False
    page: int = 1
    min_kl: float | None = None
    min_objective: float | None = None
    label: int | None = None
    q: str = ""  # words that must occur in one of the vector's completions (full-text search)
    pick: list[int] = field(default_factory=list)  # ticked vectors (for compare), kept across pages

    def params(self, **change: Any) -> dict[str, Any]:
        """The view as URL parameters (the selection left out), blank ones dropped."""
        values = {**self.__dict__, **change}
        values.pop("pick", None)
        blank = [k for k, v in values.items() if v is None or v is False or v == ""]  # 0 is a filter
        return {k: ("1" if v is True else v) for k, v in values.items() if k not in blank}

    def url(self, **change: Any) -> str:
        """The query string of this view, with the selection: what the address bar shows."""
        pairs = list(self.params(**change).items())
        if self.page == 1 and "page" not in change:
            pairs = [(k, v) for k, v in pairs if k != "page"]
        pairs += [("pick", i) for i in change.get("pick", self.pick)]
        return urlencode(pairs)


@dataclass
class Page:
    cards: list[Card]
    total: int
    query: Query
    pages: int


def matching_vectors(words: str) -> Any:
    """Ids of vectors with a completion containing all the words (the FTS5 index over generations)."""
    if not fts_query(words):  # nothing searchable (blank, or control characters only): no match
        return select(Generation.vector_id).where(false())
    hits = (
        text("SELECT rowid FROM generations_fts WHERE generations_fts MATCH :q")
        .bindparams(q=fts_query(words))
        .columns(column("rowid", Integer))
    )
    return select(Generation.vector_id).where(Generation.id.in_(hits), Generation.vector_id.is_not(None))


def labels_of(session: Session, vector_ids: list[int]) -> dict[int, list[Label]]:
    rows = session.execute(
        select(Labeling.vector_id, Label)
        .join(Label, Labeling.label_id == Label.id)
        .where(Labeling.vector_id.in_(vector_ids))
    ).all()
    out: dict[int, list[Label]] = defaultdict(list)
    for vector_id, label in rows:
        if vector_id is not None and label not in out[vector_id]:
            out[vector_id].append(label)
    return out


def samples_of(session: Session, vectors: list[Vector], prompts: list[str]) -> dict[int, list[Sample]]:
    """Greedy scale-1 completions of each vector on the run's prompts, with their unsteered partners."""
    steered = session.scalars(
        select(Generation)
        .where(
            Generation.vector_id.in_([v.id for v in vectors]),
            Generation.scale == 1.0,
            Generation.temperature == 0.0,
            Generation.prompt.in_(prompts),
        )
        .order_by(Generation.id)
    ).all()
    partner_ids = {g.unsteered_id for g in steered if g.unsteered_id is not None}
    partners = {g.id: g for g in session.scalars(select(Generation).where(Generation.id.in_(partner_ids)))}
    order = {p: i for i, p in enumerate(prompts)}
    out: dict[int, dict[str, Sample]] = defaultdict(dict)
    for g in steered:
        assert g.vector_id is not None
        out[g.vector_id].setdefault(g.prompt, Sample(g, partners.get(g.unsteered_id or -1)))
    return {vid: sorted(by.values(), key=lambda s: order[s.steered.prompt]) for vid, by in out.items()}


def gallery(session: Session, run: Run, query: Query, *, per_page: int = PER_PAGE) -> Page:
    where = [Vector.run_id == run.id]
    if query.min_kl is not None:
        where.append(Vector.kl >= query.min_kl)
    if query.min_objective is not None:
        where.append(Vector.objective >= query.min_objective)
    if query.label is not None:
        labelled = select(Labeling.vector_id).where(Labeling.label_id == query.label)
        where.append(Vector.id.in_(labelled))
    if fts_query(query.q):
        where.append(Vector.id.in_(matching_vectors(query.q)))
    total = session.scalar(select(func.count()).select_from(Vector).where(*where)) or 0
    pages = max(1, math.ceil(total / per_page))
    query.page = min(max(1, query.page), pages)
    column = SORTS.get(query.sort, Vector.index)
    ordering = column.desc() if query.desc else column.asc()
    vectors = list(
        session.scalars(
            select(Vector)
            .where(*where)
            .order_by(ordering, Vector.index)
            .limit(per_page)
            .offset((query.page - 1) * per_page)
        )
    )
    samples = samples_of(session, vectors, list(run.prompts))
    labels = labels_of(session, [v.id for v in vectors])
    cards = [Card(v, samples.get(v.id, []), labels.get(v.id, [])) for v in vectors]
    return Page(cards, total, query, pages)


def vector_map(session: Session, run: Run) -> dict[str, Any]:
    """One point per vector of the run on its first two principal components, with its labels, and
    what each axis is (the share of the vectors' spread along it)."""
    rows = session.execute(
        select(Vector.id, Vector.index, Vector.values).where(Vector.run_id == run.id).order_by(Vector.index)
    ).all()
    if not rows:
        return {"points": [], "axes": []}
    coords, shares = geometry.pca_2d(geometry.stack([r.values for r in rows]))
    labels = labels_of(session, [r.id for r in rows])
    points = [
        {
            "id": r.id,
            "index": r.index,
            "x": float(coords[i, 0]),
            "y": float(coords[i, 1]),
            "label": labels[r.id][0].name if labels.get(r.id) else "",
            "colour": labels[r.id][0].colour if labels.get(r.id) else "",
        }
        for i, r in enumerate(rows)
    ]
    axes = [
        f"principal component {k + 1} ({100 * share:.0f}% of the spread)" for k, share in enumerate(shares)
    ]
    return {"points": points, "axes": axes}
