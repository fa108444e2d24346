"""From a pile of steered completions to findings: scores, behaviours, the interesting-first order
and the discovery curve, in one call (the worker, the CLI and bench/discovery.py all use it)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.discovery.behaviours import (
    DISTANCE,
    Behaviour,
    Member,
    cluster,
    discovery_curve,
    vector_behaviour,
)
from engine.discovery.embedder import Embedder
from engine.discovery.flags import Thresholds
from engine.discovery.ranking import interesting_first, vector_interest
from engine.discovery.scores import ScoreInput, Scores, interest, score_steps
from engine.models import LoadedModel
from engine.units import run_steps


@dataclass(frozen=True)
class Completion:
    """A steered completion of one vector (learned, or of the random twin) and its unsteered partner."""

    vector: Hashable
    prompt: str
    text: str
    unsteered: str
    random: bool = False


@dataclass
class Findings:
    scores: list[Scores]  # one per completion, in the order given
    behaviours: list[Behaviour]
    behaviour_of: list[int]  # behaviour index of each completion
    vector_behaviour: dict[Any, int]
    interest: dict[Any, float]  # per vector, 0..1
    order: list[Any]  # learned vectors, interesting first
    curve: dict[str, list[int]]  # "learned" / "random": distinct behaviours after k vectors

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": [s.to_dict() for s in self.scores],
            "behaviours": [b.to_dict() for b in self.behaviours],
            "behaviour_of": self.behaviour_of,
            "vector_behaviour": [[v, b] for v, b in self.vector_behaviour.items()],
            "interest": [[v, i] for v, i in self.interest.items()],
            "order": self.order,
            "curve": self.curve,
        }


def behaviours_of(
    completions: Sequence[Completion], scores: Sequence[Scores], *, distance: float = DISTANCE
) -> tuple[list[Behaviour], list[Member]]:
    members = [
        Member(
            vector=c.vector,
            text=c.text,
            embedding=s.embedding.numpy(),
            flag=s.flag,
            random=c.random,
            changes=tuple(s.changes),
            repetition=s.repetition,
        )
        for c, s in zip(completions, scores, strict=True)
    ]
    return cluster(members, distance=distance), members


def find_steps(
    lm: LoadedModel,
    embedder: Embedder,
    completions: Sequence[Completion],
    *,
    thresholds: Thresholds | None = None,
    distance: float = DISTANCE,
) -> Generator[tuple[int, int], None, Findings]:
    """`find` as units for a compute loop: yields (units done, units in all) between the scoring's
    units (clustering, fast, is part of the last one); returns the findings."""
    inputs = [ScoreInput(c.prompt, c.text, c.unsteered, c.random) for c in completions]
    scores = yield from score_steps(lm, embedder, inputs, thresholds=thresholds)
    return organize(completions, scores, thresholds=thresholds, distance=distance)


def find(
    lm: LoadedModel,
    embedder: Embedder,
    completions: Sequence[Completion],
    *,
    thresholds: Thresholds | None = None,
    distance: float = DISTANCE,
    on_batch: Callable[[int, int], None] | None = None,
) -> Findings:
    """Score every completion, cluster them, rank the learned vectors and draw the discovery curve."""
    return run_steps(
        find_steps(lm, embedder, completions, thresholds=thresholds, distance=distance), on_batch
    )


def organize(
    completions: Sequence[Completion],
    scores: Sequence[Scores],
    *,
    thresholds: Thresholds | None = None,
    distance: float = DISTANCE,
) -> Findings:
    """Everything after scoring: behaviours, ranking and curves (no model needed)."""
    behaviours, members = behaviours_of(completions, scores, distance=distance)
    index = [-1] * len(completions)
    for b in behaviours:
        for i in b.members:
            index[i] = b.index
    per_vector: dict[Hashable, list[float]] = defaultdict(list)
    for c, s in zip(completions, scores, strict=True):
        per_vector[c.vector].append(interest(s, thresholds))
    everyone = vector_interest(per_vector)
    of_vector = vector_behaviour(behaviours, members)
    learned = {v: i for v, i in everyone.items() if v not in {c.vector for c in completions if c.random}}
    clusters = {b.index for b in behaviours if b.kind == "cluster"}
    order = interesting_first(learned, of_vector, clusters=clusters)
    first_seen: dict[str, list[Hashable]] = {"learned": [], "random": []}
    for c in completions:  # vectors in the order they were trained (given)
        group = first_seen["random" if c.random else "learned"]
        if c.vector not in group:
            group.append(c.vector)
    curve = {k: discovery_curve(vs, behaviours, members) for k, vs in first_seen.items()}
    return Findings(list(scores), behaviours, index, of_vector, everyone, list(order), curve)


def payload_steps(
    lm: LoadedModel, embedder: Embedder, rows: Sequence[dict[str, Any]]
) -> Generator[tuple[int, int], None, dict[str, Any]]:
    """`find` on JSON rows {generation_id, vector_id, prompt, text, unsteered, random}, as units; the
    answer names generations and vectors by those ids (what a worker sends back to be stored)."""
    completions = [
        Completion(
            int(r["vector_id"]), str(r["prompt"]), str(r["text"]), str(r["unsteered"]), bool(r["random"])
        )
        for r in rows
    ]
    found = yield from find_steps(lm, embedder, completions)
    return payload(found, [int(r["generation_id"]) for r in rows])


def find_payload(lm: LoadedModel, embedder: Embedder, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`payload_steps` run to the end."""
    return run_steps(payload_steps(lm, embedder, rows))


def payload(found: Findings, generation_ids: Sequence[int]) -> dict[str, Any]:
    """Findings as JSON-able rows keyed by generation and vector ids (embeddings as float32 bytes)."""
    import numpy as np

    limits = Thresholds()
    rank = {v: i for i, v in enumerate(found.order)}
    return {
        "scores": [
            {
                "generation_id": gid,
                **s.to_dict(),
                "interest": interest(s, limits),
                "behaviour": found.behaviour_of[i],
                "embedding": np.asarray(s.embedding, dtype="<f4").tobytes(),
            }
            for i, (gid, s) in enumerate(zip(generation_ids, found.scores, strict=True))
        ],
        "behaviours": [
            {
                "index": b.index,
                "kind": b.kind,
                "name": b.name,
                "words": b.words,
                "subtitle": b.subtitle,
                "trait": b.trait,
                "exemplar": generation_ids[b.exemplar],
                "size": b.size,
                "n_vectors": len(b.vectors),
                "n_random": len(b.random_vectors),
            }
            for b in found.behaviours
        ],
        "vectors": [
            {
                "vector_id": v,
                "interest": found.interest[v],
                "behaviour": found.vector_behaviour.get(v),
                "rank": rank.get(v),
            }
            for v in found.interest
        ],
        "curve": found.curve,
    }
