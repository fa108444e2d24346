"""Behaviours: steered completions grouped by what the steering did, named from their words.

Completions flagged unchanged or rephrase form one behaviour each (nothing happened, or only the
wording did); the others are clustered by scikit-learn's agglomerative clustering (average linkage,
cosine distance, a distance threshold instead of a cluster count) over their sentence embeddings.
Each behaviour gets a name a person would write when its completions share a typed trait
(engine/discovery/naming.py: "refuses", "answers with a list", "repeats itself"), else its most
distinctive words (class-based TF-IDF against the other behaviours), which it keeps as a subtitle
either way; an exemplar (the member nearest its centre), its vectors and how many of those are
random-twin vectors.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.discovery.naming import trait_name
from engine.errors import EngineError

DISTANCE = 0.7  # cosine distance at which clusters stop merging (average linkage)
NAME_WORDS = 3
FIXED = ("unchanged", "rephrase")  # flags that are behaviours of their own


@dataclass(frozen=True)
class Member:
    """One steered completion to place: its vector (any hashable key), text, flag and embedding."""

    vector: Hashable
    text: str
    embedding: Sequence[float] | NDArray[np.float32]
    flag: str = ""
    random: bool = False  # a random-twin vector's completion
    changes: tuple[str, ...] = ()  # typed traits in which it differs from its unsteered answer
    repetition: float = 0.0  # share of repeated token 3-grams


@dataclass
class Behaviour:
    index: int
    name: str
    words: list[str]
    members: list[int]  # indices into the members given
    exemplar: int  # index of the member nearest the centre
    vectors: list[Any] = field(default_factory=list)  # learned vectors with a member here
    random_vectors: list[Any] = field(default_factory=list)  # random-twin vectors with a member here
    kind: str = "cluster"  # cluster | unchanged | rephrase
    subtitle: str = ""  # the most distinctive words, "a · b · c" (the name too when no trait is shared)
    trait: str = ""  # the typed name when a trait named it, "" otherwise

    @property
    def size(self) -> int:
        return len(self.members)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "words": self.words,
            "members": self.members,
            "exemplar": self.exemplar,
            "size": self.size,
            "vectors": self.vectors,
            "random_vectors": self.random_vectors,
            "kind": self.kind,
            "subtitle": self.subtitle,
            "trait": self.trait,
        }


def _unit(rows: NDArray[np.float64]) -> NDArray[np.float64]:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def _labels(x: NDArray[np.float64], distance: float) -> NDArray[np.int64]:
    from sklearn.cluster import AgglomerativeClustering

    if len(x) == 1:
        return np.zeros(1, dtype=np.int64)
    model = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=distance
    )
    return np.asarray(model.fit_predict(x), dtype=np.int64)


def name_groups(texts_by_group: Sequence[Sequence[str]], k: int = NAME_WORDS) -> list[list[str]]:
    """The k most distinctive words of each group (class-based TF-IDF: a group is one document)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = [" ".join(texts) for texts in texts_by_group]
    if not any(d.strip() for d in docs):
        return [[] for _ in docs]
    vectorizer = TfidfVectorizer(
        stop_words="english", sublinear_tf=True, token_pattern=r"(?u)\b[^\W\d_]{2,}\b", lowercase=True
    )
    try:
        matrix = vectorizer.fit_transform(docs)
    except ValueError:  # only stop words
        return [[] for _ in docs]
    vocab = np.array(vectorizer.get_feature_names_out())
    out = []
    for row in range(matrix.shape[0]):
        weights = matrix.getrow(row).toarray()[0]
        top = [int(i) for i in np.argsort(-weights, kind="stable")[:k] if weights[i] > 0]
        out.append([str(vocab[i]) for i in top])
    return out


def cluster(members: Sequence[Member], *, distance: float = DISTANCE) -> list[Behaviour]:
    """Group the completions into behaviours, biggest first (fixed groups last)."""
    if not members:
        return []
    if not 0 < distance < 2:
        raise EngineError(f"the clustering distance must be between 0 and 2, got {distance}")
    x = _unit(np.asarray([np.asarray(m.embedding, dtype=np.float64) for m in members]))
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    free = [i for i, m in enumerate(members) if m.flag not in FIXED]
    for i, m in enumerate(members):
        if m.flag in FIXED:
            groups[(m.flag, 0)].append(i)
    if free:
        for i, label in zip(free, _labels(x[free], distance), strict=True):
            groups[("cluster", int(label))].append(i)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][0] != "cluster", -len(kv[1]), kv[1][0]))
    words = name_groups([[members[i].text for i in idx] for _, idx in ordered])
    behaviours = []
    for n, ((kind, _), idx) in enumerate(ordered):
        centre = x[idx].mean(axis=0)
        exemplar = idx[int(np.argmax(x[idx] @ centre))]
        learned = sorted({members[i].vector for i in idx if not members[i].random}, key=str)
        random = sorted({members[i].vector for i in idx if members[i].random}, key=str)
        subtitle = " · ".join(words[n])
        typed = "" if kind in FIXED else _typed(members, idx)
        name = kind if kind in FIXED else typed or subtitle or f"behaviour {n + 1}"
        behaviours.append(
            Behaviour(
                index=n,
                name=name,
                words=words[n],
                members=list(idx),
                exemplar=exemplar,
                vectors=learned,
                random_vectors=random,
                kind=kind,
                subtitle=subtitle,
                trait=typed,
            )
        )
    return behaviours


def _typed(members: Sequence[Member], idx: Sequence[int]) -> str:
    chosen = [members[i] for i in idx]
    return trait_name([m.text for m in chosen], [m.changes for m in chosen], [m.repetition for m in chosen])


def assignments(behaviours: Sequence[Behaviour], n: int) -> list[int]:
    """The behaviour index of each of the n members."""
    out = [-1] * n
    for b in behaviours:
        for i in b.members:
            out[i] = b.index
    return out


def vector_behaviour(behaviours: Sequence[Behaviour], members: Sequence[Member]) -> dict[Any, int]:
    """Each vector's behaviour: the most common one among its completions, a cluster before a fixed
    group (a vector that changes one answer of four did something)."""
    kinds = {b.index: b.kind for b in behaviours}
    seen: dict[Any, Counter[int]] = defaultdict(Counter)
    for b, m in zip(assignments(behaviours, len(members)), members, strict=True):
        seen[m.vector][b] += 1
    out = {}
    for vector, counts in seen.items():
        pool = {b: c for b, c in counts.items() if kinds[b] == "cluster"} or counts
        out[vector] = min(pool, key=lambda b: (-pool[b], b))  # most members; ties: the bigger behaviour
    return out


def discovery_curve(
    order: Sequence[Any], behaviours: Sequence[Behaviour], members: Sequence[Member]
) -> list[int]:
    """Distinct behaviours (clusters only) shown by the first k vectors of `order`, for k = 1..len."""
    reached: dict[Any, set[int]] = defaultdict(set)
    kinds = {b.index: b.kind for b in behaviours}
    for b, m in zip(assignments(behaviours, len(members)), members, strict=True):
        if kinds.get(b) == "cluster":
            reached[m.vector].add(b)
    seen: set[int] = set()
    curve = []
    for vector in order:
        seen |= reached.get(vector, set())
        curve.append(len(seen))
    return curve
