"""The gallery: a run's vectors as cards (completions beside the unsteered ones), sorted, filtered,
paginated, and the data behind the run's 2-D map."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Integer, column, false, func, literal, select, text
from sqlalchemy.orm import Session

from app.labels.labelling import fts_query
from app.models import Behaviour, DetectorScore, Generation, Label, Labeling, Run, Vector
from app.runs.scales import scored_scale
from app.vectors import dashboard, geometry

# "interesting": beyond random x fluent, one exemplar per behaviour first (unscored runs: by index).
SORTS = ("interesting", "index", "objective", "kl", "norm", "alpha", "detector")
COLUMNS = {
    "index": Vector.index,
    "objective": Vector.objective,
    "kl": Vector.kl,
    "norm": Vector.norm,
    "alpha": Vector.metrics["score"].as_float(),  # DCT: α², what its factors are ranked by
}
PER_PAGE = 24
DETECTED = 0.5  # a detector's default threshold: a regex matched, or the judge leans yes


@dataclass
class Sample:
    steered: Generation  # at x1
    unsteered: Generation | None
    working: Generation | None = None  # at the vector's working scale, when that is not 1

    @property
    def scored(self) -> Generation:
        """The completion scoring read: the one at the working scale when that is below x1."""
        if self.working is not None and self.working.scale == scored_scale(self.working.scale):
            return self.working
        return self.steered


@dataclass
class Card:
    vector: Vector
    samples: list[Sample] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    behaviour: Behaviour | None = None
    detected: float | None = None  # the chosen detector's highest score over the completions
    tokens: list[str] = field(default_factory=list)  # its top promoted tokens, once it was read
    cosine: float | None = None  # its cosine with the chosen concept


@dataclass
class Query:
    """What the user asked the gallery for; every field comes from the URL, so views can be shared."""

    sort: str = "interesting"
    desc: bool = False
    page: int = 1
    min_kl: float | None = None
    min_objective: float | None = None
    label: int | None = None
    q: str = ""  # words that must occur in one of the vector's completions (full-text search)
    pick: list[int] = field(default_factory=list)  # ticked vectors (for compare), kept across pages
    behaviour: int | None = None  # only vectors with a completion in this behaviour
    group: bool = False  # cards grouped under their behaviour
    detector: int | None = None  # show (and sort or filter by) this detector's score
    min_detector: float | None = None  # only vectors with a completion scoring at least this
    problems: list[str] = field(default_factory=list)  # filters left out, and why (said on the page)
    concept: int | None = None  # show (and filter by) the cosine with this concept (its vector's id)
    min_cosine: float | None = None  # only vectors whose cosine with the concept is at least this

    def params(self, **change: Any) -> dict[str, Any]:
        """The view as URL parameters (the selection left out), blank ones dropped."""
        values = {**self.__dict__, **change}
        values.pop("pick", None)
        values.pop("problems", None)
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
    """Greedy completions of each vector on the run's prompts at x1 (and at its working scale), with
    their unsteered partners."""
    working = {v.id: v.working_scale for v in vectors if v.working_scale not in (None, 1.0)}
    steered = session.scalars(
        select(Generation)
        .where(
            Generation.vector_id.in_([v.id for v in vectors]),
            Generation.scale.in_({1.0, *working.values()}),
            Generation.temperature == 0.0,
            Generation.prompt.in_(prompts),
        )
        .order_by(Generation.id)
    ).all()
    partner_ids = {g.unsteered_id for g in steered if g.unsteered_id is not None}
    partners = {g.id: g for g in session.scalars(select(Generation).where(Generation.id.in_(partner_ids)))}
    order = {p: i for i, p in enumerate(prompts)}
    at_one: dict[int, dict[str, Generation]] = defaultdict(dict)
    at_working: dict[int, dict[str, Generation]] = defaultdict(dict)
    for g in steered:
        assert g.vector_id is not None
        if g.scale == 1.0:
            at_one[g.vector_id].setdefault(g.prompt, g)
        elif g.scale == working.get(g.vector_id):
            at_working[g.vector_id].setdefault(g.prompt, g)
    out: dict[int, list[Sample]] = {}
    for vid, by in at_one.items():
        samples = [
            Sample(g, partners.get(g.unsteered_id or -1), at_working[vid].get(prompt))
            for prompt, g in by.items()
        ]
        out[vid] = sorted(samples, key=lambda s: order[s.steered.prompt])
    return out


def detector_scores(detector_id: int) -> Any:
    """Per vector, the detector's highest score over its completions (a subquery)."""
    return (
        select(Generation.vector_id.label("vector_id"), func.max(DetectorScore.score).label("score"))
        .join(DetectorScore, DetectorScore.generation_id == Generation.id)
        .where(DetectorScore.detector_id == detector_id, Generation.vector_id.is_not(None))
        .group_by(Generation.vector_id)
        .subquery()
    )


def _ordering(query: Query, detected: Any) -> list[Any]:
    if query.sort == "interesting" or (query.sort == "detector" and detected is None):
        ordering = [Vector.rank.is_(None), Vector.rank.desc() if query.desc else Vector.rank.asc()]
    elif query.sort == "detector":
        ordering = [
            detected.c.score.is_(None),
            detected.c.score.asc() if query.desc else detected.c.score.desc(),
        ]
    else:
        col = COLUMNS.get(query.sort, Vector.index)
        ordering = [col.desc() if query.desc else col.asc()]
    if query.group:
        ordering = [Behaviour.index.is_(None), Behaviour.index, *ordering]
    return [*ordering, Vector.index]


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
    if query.behaviour is not None:
        members = select(Generation.vector_id).where(Generation.behaviour_id == query.behaviour)
        where.append(Vector.id.in_(members))
    detected = detector_scores(query.detector) if query.detector is not None else None
    if detected is not None and query.min_detector is not None:
        hits = select(detected.c.vector_id).where(detected.c.score >= query.min_detector)
        where.append(Vector.id.in_(hits))
    cosines = concept_cosines(session, run, query.concept)
    if cosines is not None and query.min_cosine is not None:
        where.append(Vector.id.in_([i for i, c in cosines.items() if c >= query.min_cosine]))
    total = session.scalar(select(func.count()).select_from(Vector).where(*where)) or 0
    pages = max(1, math.ceil(total / per_page))
    query.page = min(max(1, query.page), pages)
    score: Any = detected.c.score if detected is not None else literal(None)
    statement = select(Vector, Behaviour, score).outerjoin(Behaviour, Vector.behaviour_id == Behaviour.id)
    if detected is not None:
        statement = statement.outerjoin(detected, detected.c.vector_id == Vector.id)
    rows = session.execute(
        statement.where(*where)
        .order_by(*_ordering(query, detected))
        .limit(per_page)
        .offset((query.page - 1) * per_page)
    ).all()
    vectors = [r[0] for r in rows]
    samples = samples_of(session, vectors, list(run.prompts))
    labels = labels_of(session, [v.id for v in vectors])
    tokens = dashboard.chips(session, [v.id for v in vectors])
    cards = [
        Card(
            v,
            samples.get(v.id, []),
            labels.get(v.id, []),
            behaviour,
            score,
            tokens.get(v.id, []),
            None if cosines is None else cosines.get(v.id),
        )
        for v, behaviour, score in rows
    ]
    return Page(cards, total, query, pages)


def concept_cosines(session: Session, run: Run, concept: int | None) -> dict[int, float] | None:
    """Each of the run's vectors' cosine with the concept's vector (None: no concept chosen); vectors
    at another block or width than the concept's have none."""
    if concept is None:
        return None
    other = session.get(Vector, concept)
    if other is None:
        return {}
    rows = session.execute(
        select(Vector.id, Vector.values).where(
            Vector.run_id == run.id, Vector.block == other.block, Vector.width == other.width
        )
    ).all()
    if not rows:
        return {}
    sims = (
        geometry.unit_rows(geometry.stack([r.values for r in rows]))
        @ geometry.unit_rows(geometry.stack([other.values]))[0]
    )
    return {r.id: float(c) for r, c in zip(rows, sims, strict=True)}


# Behaviour colours on the map: distinct hues in order of size; fixed groups in greys.
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d", "#7c3aed")
FIXED_COLOURS = {"unchanged": "#d1d5db", "rephrase": "#9ca3af"}


def behaviour_colour(behaviour: Behaviour | None) -> str:
    if behaviour is None:
        return "#2563eb"
    return FIXED_COLOURS.get(behaviour.kind) or PALETTE[behaviour.index % len(PALETTE)]


def vector_map(session: Session, run: Run) -> dict[str, Any]:
    """One point per vector of the run on its first two principal components, coloured by its
    behaviour once the run is scored (by its first label before that), and what each axis is (the
    share of the vectors' spread along it)."""
    rows = session.execute(
        select(Vector.id, Vector.index, Vector.values, Behaviour)
        .outerjoin(Behaviour, Vector.behaviour_id == Behaviour.id)
        .where(Vector.run_id == run.id)
        .order_by(Vector.index)
    ).all()
    if not rows:
        return {"points": [], "axes": []}
    coords, shares = geometry.pca_2d(geometry.stack([r.values for r in rows]))
    labels = labels_of(session, [r.id for r in rows])
    points = []
    for i, r in enumerate(rows):
        first = labels[r.id][0] if labels.get(r.id) else None
        b = r.Behaviour
        points.append(
            {
                "id": r.id,
                "index": r.index,
                "x": float(coords[i, 0]),
                "y": float(coords[i, 1]),
                "label": first.name if first else "",
                "colour": first.colour if first else "",
                "behaviour": b.name if b is not None else "",
                "behaviour_colour": behaviour_colour(b) if b is not None else "",
            }
        )
    axes = [
        f"principal component {k + 1} ({100 * share:.0f}% of the spread)" for k, share in enumerate(shares)
    ]
    return {"points": points, "axes": axes}
