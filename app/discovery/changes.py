"""A completion's typed changes (the traits it gained or lost against its unsteered answer, stored
by scoring) in the words its flags show."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# What a reader calls a typed trait gained ("now ...") or lost ("no longer ...").
TRAIT_WORDS = {
    "refusal": ("refuses", "no longer refuses"),
    "identity": ("speaks as someone", "no longer speaks as someone"),
    "disclaimer": ("hedges", "no longer hedges"),
    "list": ("writes a list", "no longer writes a list"),
    "code": ("writes code", "no longer writes code"),
    "language": ("answers in another language", "no longer answers in another language"),
    "instructions": ("gives step-by-step instructions", "no longer gives instructions"),
    "number": ("answers with a number", "no longer answers with a number"),
    "short": ("stops short", "stops short"),
}


def change_words(changes: Sequence[Any]) -> str:
    """A completion's typed changes in words: "changed: now refuses, no longer writes a list"."""
    said = []
    for change in changes:
        if not isinstance(change, dict):
            continue
        trait = str(change.get("trait", ""))
        gained, lost = TRAIT_WORDS.get(trait, (trait, f"no longer {trait}"))
        said.append(("now " + gained if trait != "short" else gained) if change.get("now", True) else lost)
    return f"changed: {', '.join(said)}" if said else ""
