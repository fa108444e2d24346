"""The "interesting first" order: vectors that moved their answers further than random vectors do
and stayed fluent, one exemplar per behaviour before the rest. A vector of interest 0 (every
completion unchanged or gibberish) never comes before one of interest above 0, even as the only
vector of its behaviour."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from statistics import fmean


def vector_interest(per_completion: Mapping[Hashable, Sequence[float]]) -> dict[Hashable, float]:
    """A vector's interest: the mean over its completions (a behaviour that holds across prompts
    beats a one-off)."""
    return {v: fmean(values) if values else 0.0 for v, values in per_completion.items()}


def interesting_first(
    interest: Mapping[Hashable, float],
    behaviour: Mapping[Hashable, int],
    *,
    clusters: set[int] | None = None,
) -> list[Hashable]:
    """Vectors in order: the most interesting vector of each behaviour (only behaviours in
    `clusters`, when given, and only vectors of interest above 0), those exemplars by interest, then
    every other vector by interest."""
    by_interest = sorted(interest, key=lambda v: (-interest[v], str(v)))
    first: list[Hashable] = []
    taken: set[int] = set()
    for v in by_interest:
        b = behaviour.get(v)
        if interest[v] <= 0 or b is None or b in taken or (clusters is not None and b not in clusters):
            continue
        taken.add(b)
        first.append(v)
    chosen = set(first)
    return first + [v for v in by_interest if v not in chosen]
