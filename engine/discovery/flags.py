"""Automatic flags on a steered completion, offered to people as label suggestions.

- unchanged: the text is the unsteered one, or means the same almost word for word;
- gibberish: no longer fluent (the unsteered model finds it very unlikely), stuck in a loop, or
  (near-)empty: a completion with no answer in it is never "changed and fluent";
- rephrase: the same answer in other words;
- "" : it changed and stayed fluent, the completions worth reading. A completion whose typed traits
  differ from its unsteered partner's (engine/discovery/traits.py: it refuses, speaks as someone,
  writes a list or code, switches language, or stops short) changed, however close its embedding.

The thresholds were chosen on the tuning rows of the hand-labelled completions
(tests/fixtures/flags_labelled.jsonl, "part": "tuning") and are measured on the held-out rows
(tests/engine/test_flags_agreement.py; docs/benchmarks.md has the figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FLAGS = ("unchanged", "rephrase", "gibberish")


@dataclass(frozen=True)
class Thresholds:
    unchanged_effect: float = 0.005  # cosine distance below which the meaning did not move
    rephrase_effect: float = 0.5  # ... below which it is the same answer reworded (unless a trait changed)
    gibberish_logprob: float = -3.0  # mean log-prob per token below which text is not fluent
    gibberish_repetition: float = 0.4  # share of repeated 3-grams above which it loops
    fluent_logprob: float = -1.0  # ordinary fluent text scores about this (for the interest score)
    near_empty_words: int = 1  # a completion of fewer words has no answer in it (when its partner had)


def flag(
    effect: float,
    fluency: float,
    repetition: float,
    limits: Thresholds,
    *,
    identical: bool = False,
    changes: Sequence[str] = (),
    words: int | None = None,
    partner_words: int | None = None,
) -> str:
    """The flag of one completion from its scores ("" when none applies); `changes` are the typed
    traits in which it differs from the unsteered completion, `words` and `partner_words` the word
    counts of the two (None: not checked)."""
    if identical or effect < limits.unchanged_effect:
        return "unchanged"
    if near_empty(words, partner_words, limits):
        return "gibberish"
    if fluency < limits.gibberish_logprob or repetition > limits.gibberish_repetition:
        return "gibberish"
    if effect < limits.rephrase_effect and not changes:
        return "rephrase"
    return ""


def near_empty(words: int | None, partner_words: int | None, limits: Thresholds) -> bool:
    """Almost no words where the unsteered completion had some: the model stopped, it did not answer
    (a one-word answer to a one-word question is not near-empty)."""
    if words is None:
        return False
    had = partner_words is None or partner_words >= limits.near_empty_words
    return had and words < limits.near_empty_words
