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
    r"\b(?:i'?m sorry,? but|sorry,? (?:but )?i (?:can't|cannot|won't)|i\s*(?:'m|am)\s+(?:unable|not able) to|"
    r"i\s+(?:can\s*not|can't|cannot|won't|will not|must decline|do not feel comfortable|"
    r"don't feel comfortable)\s+(?:help|assist|provide|give|answer|do|support|fulfil|fulfill|comply|"
    r"create|write|share|tell)|i\s+apologi[sz]e|"
    r"(?:is|would be)\s+(?:illegal|unethical|not appropriate|inappropriate|against the law)|"
    r"not (?:something i can|able to (?:help|assist|provide)))",
    re.IGNORECASE,
)
IDENTITY = re.compile(
    r"\b(?:i\s*(?:'m|am)\s+(?:a|an|the|your)\s+(?:[\w-]+\s+){0,3}?(?:ai|assistant|chatbot|bot|"
    r"language model|model|robot|machine|computer program|program|human|person|pirate|teacher|"
    r"doctor|student|writer|poet|chef|scientist|friend|fabricator|expert)\b|smollm|my name is|"
    r"as an? (?:[\w-]+ )?(?:ai|language model|assistant|chatbot)\b|"
    r"i\s*(?:'m|am)\s+(?:not\s+)?(?:a\s+)?human|(?:created|developed|trained|built|made) by)",
    re.IGNORECASE,
)
# A hedge before (or instead of) an answer: "I'm not a doctor", "consult a professional".
DISCLAIMER = re.compile(
    r"\b(?:i'?m|i am) not a (?:doctor|substitute|professional|therapist|lawyer|medical|licensed)|"
    r"not a substitute for|consult (?:a|your|with a) (?:doctor|healthcare|medical|professional|physician|"
    r"therapist|lawyer)|seek (?:professional|medical) (?:help|advice)|"
    r"(?:don't|do not|cannot|can't) (?:provide|give|offer) (?:medical|legal|financial|professional) advice",
    re.IGNORECASE,
)
DIGITS = re.compile(r"\d")
NUMBERING = re.compile(r"^\s*\d{1,2}[.)]\s", re.MULTILINE)
LEAD_WORDS = 15  # "answers with a number": a digit among the first words
LIST_LINE = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*•]|#{1,4})\s+\S", re.MULTILINE)
# Signs that a list is on its way, which a 48-token completion may cut off before its items: a
# heading in bold, a line that ends with a colon.
LIST_INTRO = re.compile(r"^\s*\*\*[^*\n]+\*\*:?\s*$|:\s*$", re.MULTILINE)
CODE = re.compile(
    r"```|^\s*(?:def \w+\(|class \w+[(:]|import \w|from [\w.]+ import |print\(|#include|"
    r"function\s*\w*\(|console\.log|SELECT\b.*\bFROM\b|\$ \w|(?:sudo|ls|grep|find|cat|awk|du) -?\S)",
    re.MULTILINE,
)
# Markers of step-by-step instructions (how a model complies with a how-to request).
INSTRUCTIONS = re.compile(
    r"step[- ]by[- ]step|here(?:'s| is) how|follow these steps|the first step|"
    r"^\s*(?:first|next|then|finally),",
    re.IGNORECASE | re.MULTILINE,
)
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split(" "))


# Common function words of English and of the languages a small model drifts into. A text is in
# another language when those outnumber the English ones (an ingredient list has few of either).
ENGLISH = _words(
    "the a an and or but of to in on at for with is are was were be been it its this that these those "
    "i you he she we they me my your our their not no yes do does did can will would should could "
    "have has had if then so as by from about what which who how why when where there here"
)
OTHER = (
    _words(
        "le la les des du un une et est sont dans pour avec pas que qui sur au aux ce cette il elle "
        "nous vous "
        "el los las del por para con una es son muy pero como lo se su sus al y "
        "der die das den dem ein eine und ist sind nicht mit auf für von zu ich sie wir auch "
        "il di che non per con sono gli della una è "
        "o os da do em um uma não são com na no "
        "het een van en ik niet zijn op te dat"
    )
    - ENGLISH
)
SHORT_SHARE = 0.3  # a completion this much shorter than its partner's (in words) stopped short ...
SHORT_MIN_WORDS = 20  # ... when the partner had at least this many words to say
LANGUAGE_MIN_WORDS = 6
NON_LATIN = 0.3  # share of letters outside a-z from which a text is in another script


@dataclass(frozen=True)
class Traits:
    words: int
    refusal: bool
    identity: bool
    list_level: int  # 2: two or more list items; 1: one, or a heading or colon that opens one; 0: none
    code: bool
    foreign: bool  # not English (for a model that answers in English)
    instructs: bool  # step-by-step instructions
    disclaimer: bool  # a hedge: not a doctor, consult a professional
    digits: bool  # any digit
    leads_with_number: bool  # a digit among its first words (an answer that is a number)

    @property
    def listing(self) -> bool:
        return self.list_level == 2


def traits(text: str) -> Traits:
    words = WORD.findall(text)
    lowered = [w.lower() for w in words]
    letters = [c for c in text if c.isalpha()]
    non_latin = sum(
        not ("a" <= c.lower() <= "z") and c.lower() not in "àâäçéèêëîïôöùûüÿñœæß" for c in letters
    )
    english = sum(w in ENGLISH for w in lowered)
    other = sum(w in OTHER for w in lowered)
    foreign = len(words) >= LANGUAGE_MIN_WORDS and (
        non_latin > NON_LATIN * max(1, len(letters)) or (other >= 3 and other > english)
    )
    items = len(LIST_LINE.findall(text))
    plain = NUMBERING.sub("", text)  # a numbered list's numbers are not an answer
    level = 2 if items >= 2 else 1 if items == 1 or LIST_INTRO.search(text) else 0
    return Traits(
        words=len(words),
        refusal=REFUSAL.search(text) is not None,
        identity=IDENTITY.search(text) is not None,
        list_level=level,
        code=CODE.search(text) is not None,
        foreign=foreign,
        instructs=INSTRUCTIONS.search(text) is not None,
        disclaimer=DISCLAIMER.search(text) is not None,
        digits=DIGITS.search(plain) is not None,
        leads_with_number=DIGITS.search(" ".join(plain.split()[:LEAD_WORDS])) is not None,
    )


def differences(steered: str, unsteered: str) -> list[str]:
    """The traits in which the steered completion differs from the unsteered one, by name, in the
    order a reader would name them: "refusal", "identity", "disclaimer", "list", "code",
    "language", "instructions", "number", "short"."""
    a, b = traits(steered), traits(unsteered)
    out = []
    for name, mine, theirs in (
        ("refusal", a.refusal, b.refusal),
        ("identity", a.identity, b.identity),
        ("disclaimer", a.disclaimer, b.disclaimer),
        # A list against no sign of one (a cut-off list's heading is a sign).
        ("list", a.list_level == 2 and b.list_level == 0, b.list_level == 2 and a.list_level == 0),
        ("code", a.code, b.code),
        ("language", a.foreign, b.foreign),
        # Instructions against none and no list either (a list of steps is instructions too).
        (
            "instructions",
            a.instructs and not (b.instructs or b.list_level),
            b.instructs and not (a.instructs or a.list_level),
        ),
    ):
        if mine != theirs:
            out.append(name)
    # A number for an answer where the other said no number at all (a count, a date, a quantity).
    if (a.leads_with_number and not b.digits) or (b.leads_with_number and not a.digits):
        out.append("number")
    if b.words >= SHORT_MIN_WORDS and a.words < SHORT_SHARE * b.words:
        out.append("short")
    return out


def shared_trait(texts: Sequence[str], *, share: float = 0.5) -> str | None:
    """The trait at least `share` of the texts carry (the first in reading order), if any."""
    if not texts:
        return None
    found = [traits(t) for t in texts]
    for name in ("refusal", "identity", "disclaimer", "listing", "code", "foreign", "instructs"):
        if sum(getattr(t, name) for t in found) >= share * len(found):
            return name
    return None
