"""Automatic flags on a steered completion, offered to people as label suggestions.

- unchanged: the text is the unsteered one, or means the same almost word for word;
- gibberish: no longer fluent (the unsteered model finds it very unlikely) or stuck in a loop;
- rephrase: the same answer in other words;
- "" : it changed and stayed fluent, the completions worth reading.

The thresholds were chosen (a grid search) on the even rows of 156 hand-labelled completions of
the embedded model (tests/fixtures/flags_labelled.jsonl): 85% agreement there, 96% on the odd rows,
90% overall. The usual miss: a real change in the unsteered answer's own words (a wrong capital,
a hedge before the same recipe) reads as a rephrase (11 of the 30 "changed" completions).
"""

from __future__ import annotations

from dataclasses import dataclass

FLAGS = ("unchanged", "rephrase", "gibberish")


@dataclass(frozen=True)
class Thresholds:
    unchanged_effect: float = 0.02  # cosine distance below which the meaning did not move
    rephrase_effect: float = 0.55  # ... below which it is the same answer reworded
    gibberish_logprob: float = -3.0  # mean log-prob per token below which text is not fluent
    gibberish_repetition: float = 0.35  # share of repeated 3-grams above which it loops
    fluent_logprob: float = -1.0  # ordinary fluent text scores about this (for the interest score)


def flag(
    effect: float, fluency: float, repetition: float, limits: Thresholds, *, identical: bool = False
) -> str:
    """The flag of one completion from its scores ("" when none applies)."""
    if identical or effect < limits.unchanged_effect:
        return "unchanged"
    if fluency < limits.gibberish_logprob or repetition > limits.gibberish_repetition:
        return "gibberish"
    if effect < limits.rephrase_effect:
        return "rephrase"
    return ""
