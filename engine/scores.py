"""Scores of steered completions: how far each moved from the unsteered answer, whether it is still
fluent, and whether it moved further than the run's random vectors move it.

- effect: cosine distance between the sentence embeddings of the steered and the unsteered
  completion of the same prompt (0 = same meaning, 1 = unrelated);
- fluency: mean log-probability per token of the steered completion under the *unsteered* model,
  teacher forced after the prompt (batched);
- repetition: share of the completion's token 3-grams that repeat an earlier one (loops → 1);
- beyond_random: percentile of the effect among the random twin's effects on the same prompt.
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.embedder import Embedder
from engine.errors import EngineError
from engine.flags import Thresholds, flag
from engine.models import LoadedModel
from engine.prompts import format_prompt, positions_from_mask

NGRAM = 3  # repetition counts repeated token 3-grams
FLUENCY_BATCH = 16  # rows teacher-forced together


@dataclass(frozen=True)
class ScoreInput:
    """One completion to score, beside the unsteered completion of the same prompt and settings."""

    prompt: str
    text: str
    unsteered: str
    random: bool = False  # a random-twin completion: part of the baseline


@dataclass
class Scores:
    effect: float
    fluency: float  # mean log-prob per token; 0.0 for an empty completion
    repetition: float
    beyond_random: float | None  # percentile 0-100; None without random-twin completions
    flag: str  # "unchanged" | "rephrase" | "gibberish" | "" (changed and fluent)
    embedding: Tensor = field(repr=False)  # [d] unit vector of the steered completion

    def to_dict(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "fluency": self.fluency,
            "repetition": self.repetition,
            "beyond_random": self.beyond_random,
            "flag": self.flag,
        }


def repetition(token_ids: Sequence[int], n: int = NGRAM) -> float:
    """Share of n-grams that already occurred earlier in the sequence (0 for fewer than n+1 tokens)."""
    grams = [tuple(token_ids[i : i + n]) for i in range(len(token_ids) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def _rows(lm: LoadedModel, prompts: Sequence[str], texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    tok = lm.tokenizer
    templated = bool(getattr(tok, "chat_template", None))
    rows = []
    for prompt, text in zip(prompts, texts, strict=True):
        head = list(tok(format_prompt(tok, prompt), add_special_tokens=not templated)["input_ids"])
        tail = list(tok(text, add_special_tokens=False)["input_ids"]) if text else []
        rows.append((head, tail))
    return rows


@torch.no_grad()
def _fluency_batch(lm: LoadedModel, rows: Sequence[tuple[list[int], list[int]]]) -> list[float]:
    """Mean log-prob of each tail after its head: heads left-padded, tails right-padded, so every
    row's tail occupies the same columns and only those columns need the LM head."""
    model = lm.model
    device = next(model.parameters()).device
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    h = max(len(a) for a, _ in rows)
    t = max(len(b) for _, b in rows)
    ids = torch.full((len(rows), h + t), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), h + t), dtype=torch.long)
    for i, (head, tail) in enumerate(rows):
        ids[i, h - len(head) : h + len(tail)] = torch.tensor(head + tail)
        mask[i, h - len(head) : h + len(tail)] = 1
    kwargs: dict[str, Any] = {}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        # Column h-1 predicts the first tail token; h+t-2 the last.
        kwargs["logits_to_keep"] = torch.arange(h - 1, h + t - 1, device=device)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions_from_mask(mask).to(device),
        use_cache=False,
        **kwargs,
    )
    logits = out.logits if kwargs else out.logits[:, h - 1 : h + t - 1]  # [B, t, V]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    targets = ids[:, h:].to(device)  # [B, t]
    picked = logprobs.gather(-1, targets[..., None])[..., 0]  # [B, t]
    real = mask[:, h:].to(device).bool()
    sums = (picked * real).sum(dim=1)
    counts = real.sum(dim=1)
    return [float(s / c) if c > 0 else 0.0 for s, c in zip(sums.cpu(), counts.cpu(), strict=True)]


def fluency(
    lm: LoadedModel, prompts: Sequence[str], texts: Sequence[str], *, batch_size: int = FLUENCY_BATCH
) -> list[float]:
    """Mean log-prob per token of each text after its prompt under the model as loaded (unsteered)."""
    return [f for _, f in _fluency_steps(lm, _rows(lm, prompts, texts), batch_size)]


def _fluency_steps(
    lm: LoadedModel, rows: Sequence[tuple[list[int], list[int]]], batch_size: int
) -> Iterator[tuple[int, float]]:
    """(row index, fluency) in row order, one batch per forward; rows of similar length together."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    found: dict[int, float] = {}
    emitted = 0
    for lo in range(0, len(order), batch_size):
        chunk = order[lo : lo + batch_size]
        for i, value in zip(chunk, _fluency_batch(lm, [rows[i] for i in chunk]), strict=True):
            found[i] = value
        while emitted in found:
            yield emitted, found.pop(emitted)
            emitted += 1


def percentile(value: float, baseline: Sequence[float]) -> float:
    """Where value falls among the baseline values, 0-100 (ties count half)."""
    if not baseline:
        raise EngineError("a percentile needs at least one baseline value")
    below = sum(b < value for b in baseline)
    equal = sum(b == value for b in baseline)
    return 100.0 * (below + 0.5 * equal) / len(baseline)


def beyond_random(effects: Sequence[float], inputs: Sequence[ScoreInput]) -> list[float | None]:
    """Each effect's percentile among the random-twin effects on its prompt (all prompts if that
    prompt has none); None everywhere when there is no random-twin completion at all."""
    by_prompt: dict[str, list[float]] = defaultdict(list)
    for e, s in zip(effects, inputs, strict=True):
        if s.random:
            by_prompt[s.prompt].append(e)
    everything = [e for values in by_prompt.values() for e in values]
    if not everything:
        return [None] * len(effects)
    return [
        percentile(e, by_prompt.get(s.prompt) or everything) for e, s in zip(effects, inputs, strict=True)
    ]


def score(
    lm: LoadedModel,
    embedder: Embedder,
    inputs: Sequence[ScoreInput],
    *,
    thresholds: Thresholds | None = None,
    batch_size: int = FLUENCY_BATCH,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Scores]:
    """Score every input; `on_batch(done, total)` is called after each fluency batch (the slow part).

    The caller may pause inside `on_batch` (a worker interleaving chat replies does).
    """
    if not inputs:
        return []
    texts = [s.text for s in inputs]
    unsteered = sorted({s.unsteered for s in inputs})
    embedded = embedder.encode(texts + unsteered)  # [N + U, d]
    steered_emb = embedded[: len(texts)]
    reference = dict(zip(unsteered, embedded[len(texts) :], strict=True))
    effects = []
    for i, s in enumerate(inputs):
        if s.text.strip() == s.unsteered.strip():
            effects.append(0.0)  # identical text: no embedding noise
        else:
            cos = float(steered_emb[i] @ reference[s.unsteered])
            effects.append(max(0.0, 1.0 - cos))
    rows = _rows(lm, [s.prompt for s in inputs], texts)
    fluencies: list[float] = []
    for i, value in _fluency_steps(lm, rows, batch_size):
        fluencies.append(value)
        if on_batch is not None and (len(fluencies) % batch_size == 0 or i == len(rows) - 1):
            on_batch(len(fluencies), len(rows))
    repeats = [repetition(tail) for _, tail in rows]
    beyond = beyond_random(effects, inputs)
    limits = thresholds or Thresholds()
    out = []
    for i, s in enumerate(inputs):
        identical = s.text.strip() == s.unsteered.strip()
        out.append(
            Scores(
                effect=effects[i],
                fluency=fluencies[i],
                repetition=repeats[i],
                beyond_random=beyond[i],
                flag=flag(effects[i], fluencies[i], repeats[i], limits, identical=identical),
                embedding=steered_emb[i],
            )
        )
    return out


def fluent_share(fluency_value: float, repetition_value: float, limits: Thresholds | None = None) -> float:
    """0 (gibberish) .. 1 (as fluent as ordinary text): the fluency half of the interest score."""
    t = limits or Thresholds()
    span = t.fluent_logprob - t.gibberish_logprob
    share = (fluency_value - t.gibberish_logprob) / span if span > 0 else 1.0
    return max(0.0, min(1.0, share)) * max(0.0, 1.0 - repetition_value / max(t.gibberish_repetition, 1e-9))


def interest(scores: Scores, limits: Thresholds | None = None) -> float:
    """Beyond random × fluent, 0..1; the effect stands in for beyond_random without a twin."""
    moved = scores.beyond_random / 100.0 if scores.beyond_random is not None else min(1.0, scores.effect)
    if scores.flag in ("unchanged", "gibberish"):
        return 0.0
    value = moved * fluent_share(scores.fluency, scores.repetition, limits)
    return value if math.isfinite(value) else 0.0
