"""Typed traits of a completion, read from its surface: does it refuse, speak as someone, write a
list or code, switch language, stop almost at once?

Sentence embeddings see a refusal written in the unsteered answer's words, or the same recipe as a
numbered list, as "the same meaning". These traits are what a reader notices first, so a
completion whose traits differ from its unsteered partner's changed, however close the embeddings;
and a behaviour whose completions share a trait is named after it ("refuses", "numbered list").
Regular expressions and simple counts only: the embedded model as a judge was too weak for this
(ROC AUC 0.52-0.81, docs/benchmarks.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

REFUSAL = re.compile(
    r"\b(?:i\s*(?:'m|am)\s+(?:sorry|unable|not able)|i\s+(?:can\s*not|can't|cannot|won't|will not|"
    r"must decline|do not feel comfortable|don't feel comfortable)\s+(?:help|assist|provide|"
    r"give|answer|do|support|fulfil|fulfill|comply|create|write|share|tell)|i\s+apologi[sz]e|"
    r"(?:is|would be)\s+(?:illegal|unethical|not appropriate|inappropriate|against the law)|"
    r"not (?:something i can|able to (?:help|assist|provide)))",
    re.IGNORECASE,
)
IDENTITY = re.compile(
    r"\b(?:i\s*(?:'m|am)\s+(?:a|an|the|your)\s+(?:[\w-]+\s+){0,3}?(?:ai|assistant|chatbot|bot|"
    r"language model|model|robot|machine|computer program|program|human|person|pirate|teacher|"
    r"doctor|student|writer|poet|chef|scientist|friend)\b|smollm|my name is|as an? (?:ai|"
    r"language model|assistant|chatbot)\b|i\s*(?:'m|am)\s+(?:not\s+)?(?:a\s+)?human|"
    r"(?:created|developed|trained|built|made) by)",
    re.IGNORECASE,
)
LIST_LINE = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*•]|#{1,4})\s+\S", re.MULTILINE)
CODE = re.compile(
    r"```|^\s*(?:def |class |import |from \S+ import |for \w+ in |print\(|return\b|SELECT |"
    r"#include|function\s*\w*\(|const |let |var |\$ |sudo |ls |find |grep |cat )|;\s*$|\w+\(\)\s*[{:]",
    re.IGNORECASE | re.MULTILINE,
)
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
# The commonest English function words: ordinary English text is a third to a half made of them.
_FUNCTION_WORDS = (
    "the a an and or but of to in on at for with is are was were be been it its this that these those "
    "i you he she we they me my your our their not no yes do does did can will would should could "
    "have has had if then so as by from about what which who how why when where there here"
)
ENGLISH = frozenset(_FUNCTION_WORDS.split(" "))
SHORT_SHARE = 0.3  # a completion this much shorter than its partner's (in words) stopped short ...
SHORT_MIN_WORDS = 20  # ... when the partner had at least this many words to say
NOT_ENGLISH = 0.12  # a share of English function words below this, over enough words, is another language
LANGUAGE_MIN_WORDS = 8


@dataclass(frozen=True)
class Traits:
    words: int
    refusal: bool
    identity: bool
    listing: bool  # two or more list items or headings
    code: bool
    foreign: bool  # not English (for a model that answers in English)


def traits(text: str) -> Traits:
    words = WORD.findall(text)
    lowered = [w.lower() for w in words]
    letters = [c for c in text if c.isalpha()]
    non_latin = sum(not ("a" <= c.lower() <= "z") for c in letters) / max(1, len(letters))
    english = sum(w in ENGLISH for w in lowered) / max(1, len(lowered))
    foreign = len(words) >= LANGUAGE_MIN_WORDS and (english < NOT_ENGLISH or non_latin > 0.3)
    return Traits(
        words=len(words),
        refusal=REFUSAL.search(text) is not None,
        identity=IDENTITY.search(text) is not None,
        listing=len(LIST_LINE.findall(text)) >= 2,
        code=CODE.search(text) is not None,
        foreign=foreign,
    )


def differences(steered: str, unsteered: str) -> list[str]:
    """The traits in which the steered completion differs from the unsteered one, by name, in the
    order a reader would name them: "refusal", "identity", "list", "code", "language", "short"."""
    a, b = traits(steered), traits(unsteered)
    out = []
    for name, mine, theirs in (
        ("refusal", a.refusal, b.refusal),
        ("identity", a.identity, b.identity),
        ("list", a.listing, b.listing),
        ("code", a.code, b.code),
        ("language", a.foreign, b.foreign),
    ):
        if mine != theirs:
            out.append(name)
    if b.words >= SHORT_MIN_WORDS and a.words < SHORT_SHARE * b.words:
        out.append("short")
    return out


def shared_trait(texts: Sequence[str], *, share: float = 0.5) -> str | None:
    """The trait at least `share` of the texts carry (the first in reading order), if any."""
    if not texts:
        return None
    found = [traits(t) for t in texts]
    for name in ("refusal", "identity", "listing", "code", "foreign"):
        if sum(getattr(t, name) for t in found) >= share * len(found):
            return name
    return None
