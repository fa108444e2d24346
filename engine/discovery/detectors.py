"""Detectors: a question asked of every completion, answered by a regular expression or by a judge
model (any local chat model; the embedded one by default).

A judge's score is P(yes) / (P(yes) + P(no)) for the first token of its answer. The embedded
135M model is a weak judge: it answers simple surface questions ("is this in French?", "is this a
list?") better than chance and anything subtle close to chance; a bigger local model is better.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from engine.errors import EngineError
from engine.models import LoadedModel
from engine.prompts import encode_prompts
from engine.units import run_steps

JUDGE_TEMPLATE = (
    "Read the text between the lines and answer the question with yes or no.\n"
    "---\n{text}\n---\nQuestion: {question}\nAnswer yes or no."
)
MAX_PATTERN = 1000
MAX_TEXT_CHARS = 2000  # a judged completion is cut here (the judge's context is small)


@dataclass(frozen=True)
class Detector:
    kind: Literal["regex", "judge"]
    pattern: str  # the regular expression, or the yes/no question
    ignore_case: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("regex", "judge"):
            raise EngineError(f"a detector is a regex or a judge, got {self.kind!r}")
        if not self.pattern.strip():
            raise EngineError("the detector's pattern or question is empty")
        if len(self.pattern) > MAX_PATTERN:
            raise EngineError(f"the detector's pattern or question is longer than {MAX_PATTERN} characters")
        if self.kind == "regex":
            compile_pattern(self.pattern, self.ignore_case)


def compile_pattern(pattern: str, ignore_case: bool = True) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise EngineError(f"not a valid regular expression: {exc}") from None


def _answer_ids(tokenizer: object, words: Sequence[str]) -> list[int]:
    """First token ids of the answer words in the spellings a model may start its reply with."""
    ids: set[int] = set()
    for w in words:
        for variant in (w, w.capitalize(), " " + w, " " + w.capitalize(), w.upper()):
            tokens = tokenizer(variant, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
            if tokens:
                ids.add(int(tokens[0]))
    return sorted(ids)


def judge_steps(
    lm: LoadedModel, question: str, texts: Sequence[str], *, batch_size: int = 16
) -> Generator[tuple[int, int], None, list[float]]:
    """`judge` as units for a compute loop: one batch of texts per `next()`, yielding (texts done,
    texts in all); returns P(yes) for each text."""
    yes, no = _answer_ids(lm.tokenizer, ("yes",)), _answer_ids(lm.tokenizer, ("no",))
    shared = set(yes) & set(no)  # e.g. a bare space that starts both spellings
    yes, no = [i for i in yes if i not in shared], [i for i in no if i not in shared]
    if not yes or not no:
        raise EngineError("the judge's tokenizer cannot tell yes from no")
    device = next(lm.model.parameters()).device
    out: list[float] = []
    for lo in range(0, len(texts), batch_size):
        prompts = [
            JUDGE_TEMPLATE.format(text=t[:MAX_TEXT_CHARS], question=question.strip())
            for t in texts[lo : lo + batch_size]
        ]
        batch = encode_prompts(lm.tokenizer, prompts).to(device)
        with torch.no_grad():
            logits = lm.model(**batch.model_inputs(), use_cache=False).logits[:, -1].float()
        probs = torch.softmax(logits, dim=-1)
        p_yes = probs[:, yes].sum(dim=-1)
        p_no = probs[:, no].sum(dim=-1)
        out.extend((p_yes / (p_yes + p_no).clamp_min(1e-12)).tolist())
        yield len(out), len(texts)
    return out


def judge(
    lm: LoadedModel,
    question: str,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[float]:
    """P(yes) of the judge for each text, from its next-token distribution after the question."""
    return run_steps(judge_steps(lm, question, texts, batch_size=batch_size), on_batch)


def detect(
    detector: Detector,
    texts: Sequence[str],
    lm: LoadedModel | None = None,
    *,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[float]:
    """The detector's score for each text: 1/0 for a regex match, P(yes) for a judge."""
    if detector.kind == "regex":
        pattern = compile_pattern(detector.pattern, detector.ignore_case)
        return [1.0 if pattern.search(t) else 0.0 for t in texts]
    if lm is None:
        raise EngineError("a judge detector needs a loaded model")
    return judge(lm, detector.pattern, texts, on_batch=on_batch)
