"""Names a person would write for a behaviour ("refuses", "answers with a list"), from the typed
traits its completions share (engine/discovery/traits.py), before falling back to its most
distinctive words.

A trait names a behaviour when at least half of its completions carry it as a change from their
unsteered answers (a refusal where the model used to answer names it "refuses"; an answer where it
used to refuse, "stops refusing"), or, for loops, when half of them repeat themselves.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from engine.discovery.traits import traits

SHARE = 0.5  # of a behaviour's completions that must share the trait that names it
LOOPING = 0.35  # share of repeated 3-grams from which a completion repeats itself (the gibberish flag's)
AI_SELF = re.compile(
    r"\b(?:ai|assistant|chatbot|language model|smollm|trained by|created by)\b", re.IGNORECASE
)

# A changed trait's name, by whether the behaviour's completions now have it or have lost it.
GAINED = {
    "refusal": "refuses",
    "disclaimer": "adds a disclaimer",
    "number": "answers with a number",
    "list": "answers with a list",
    "code": "writes code",
    "language": "answers in another language",
    "instructions": "gives instructions",
    "short": "stops short",
}
LOST = {
    "refusal": "stops refusing",
    "disclaimer": "drops the disclaimer",
    "number": "drops the number",
    "identity": "stops talking about itself",
    "list": "drops the list",
    "code": "drops the code",
    "language": "answers in English",
    "short": "stops short",
}
CHECK = {
    "refusal": "refusal",
    "disclaimer": "disclaimer",
    "number": "leads_with_number",
    "identity": "identity",
    "list": "listing",
    "code": "code",
    "language": "foreign",
}


def trait_name(texts: Sequence[str], changes: Sequence[Sequence[str]], repetition: Sequence[float]) -> str:
    """The typed name of a group of completions ("" when no trait is shared by enough of them);
    `changes` are each completion's changed traits, `repetition` its share of repeated 3-grams."""
    n = len(texts)
    if n == 0:
        return ""
    counts = Counter(c for row in changes for c in dict.fromkeys(row))
    for change, count in counts.most_common():
        if count < SHARE * n:
            break
        holders = [t for t, row in zip(texts, changes, strict=True) if change in row]
        attribute = CHECK.get(change)
        have = attribute is None or sum(bool(getattr(traits(t), attribute)) for t in holders) * 2 >= len(
            holders
        )
        if change == "identity" and have:
            ai = sum(AI_SELF.search(t) is not None for t in holders) * 2 >= len(holders)
            return "introduces itself as an AI" if ai else "speaks as a persona"
        return (GAINED if have else LOST).get(change, change)
    if sum(r > LOOPING for r in repetition) >= SHARE * n:
        return "repeats itself"
    return ""
