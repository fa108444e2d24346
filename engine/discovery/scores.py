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

import copy
import math
from collections import defaultdict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

from engine.discovery.embedder import Embedder
from engine.discovery.flags import Thresholds, flag
from engine.discovery.traits import differences, traits
from engine.errors import EngineError
from engine.models import LoadedModel
from engine.prompts import format_prompt
from engine.steer.pauses import pausing
from engine.units import run_steps

T = TypeVar("T")
NGRAM = 3  # repetition counts repeated token 3-grams
FLUENCY_BATCH = 8  # rows teacher-forced together (one unit: a chat waits for at most one)


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
    changes: list[str] = field(default_factory=list)  # typed traits that differ from the unsteered one

    def to_dict(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "fluency": self.fluency,
            "repetition": self.repetition,
            "beyond_random": self.beyond_random,
            "flag": self.flag,
            "changes": list(self.changes),
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
def _fluency_of_prompt(
    lm: LoadedModel, head: list[int], tails: Sequence[list[int]], batch_size: int
) -> Iterator[list[float]]:
    """Mean log-prob of each tail after one shared head, a batch of tails at a time.

    The head (the rendered prompt) is run once and its KV cache copied for every batch, so each
    batch computes only the completions' own tokens.
    """
    model = lm.model
    device = next(model.parameters()).device
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    head_ids = torch.tensor([head], device=device)
    with pausing(model):  # a chat may run between two blocks (engine/steer/pauses.py)
        prefill = model(input_ids=head_ids, use_cache=True)
    first = torch.log_softmax(prefill.logits[0, -1].float(), dim=-1)  # predicts every tail's first token
    cache = prefill.cache
    h = len(head)
    for lo in range(0, len(tails), batch_size):
        chunk = tails[lo : lo + batch_size]
        b, t = len(chunk), max(1, max(len(x) for x in chunk))
        ids = torch.full((b, t), pad, dtype=torch.long)
        real = torch.zeros((b, t), dtype=torch.bool)
        for i, tail in enumerate(chunk):
            ids[i, : len(tail)] = torch.tensor(tail, dtype=torch.long)
            real[i, : len(tail)] = True
        ids, real = ids.to(device), real.to(device)
        sums = first[ids[:, 0]] * real[:, 0]  # [b]
        if t > 1:
            shared = copy.deepcopy(cache)
            shared.batch_repeat_interleave(b)
            mask = torch.cat([torch.ones((b, h), dtype=torch.long, device=device), real.long()], dim=1)
            positions = torch.arange(h, h + t, device=device)[None, :].expand(b, t)
            with pausing(model):
                out = model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, cache=shared
                )
            logprobs = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # [b, t-1, V]
            picked = logprobs.gather(-1, ids[:, 1:, None])[..., 0]  # [b, t-1]
            sums = sums + (picked * real[:, 1:]).sum(dim=1)
        counts = real.sum(dim=1)
        yield [float(s / c) if c > 0 else 0.0 for s, c in zip(sums.cpu(), counts.cpu(), strict=True)]


def fluency(
    lm: LoadedModel, prompts: Sequence[str], texts: Sequence[str], *, batch_size: int = FLUENCY_BATCH
) -> list[float]:
    """Mean log-prob per token of each text after its prompt under the model as loaded (unsteered)."""
    return run_steps(fluency_steps(lm, prompts, texts, batch_size=batch_size))


def fluency_steps(
    lm: LoadedModel, prompts: Sequence[str], texts: Sequence[str], *, batch_size: int = FLUENCY_BATCH
) -> Generator[tuple[int, int], None, list[float]]:
    """`fluency` one batch per `next()`, yielding (batches done, batches in all)."""
    rows = _rows(lm, prompts, texts)
    total = sum(math.ceil(len(tails) / batch_size) for tails in _distinct_tails(rows).values())
    out = [0.0] * len(texts)
    for done, batch in enumerate(_fluency_batches(lm, rows, batch_size), start=1):
        for i, value in batch:
            out[i] = value
        yield done, total
    return out


def token_ids(lm: LoadedModel, text: str) -> list[int]:
    """A completion's token ids as scoring counts them (no special tokens)."""
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _fluency_batches(
    lm: LoadedModel, rows: Sequence[tuple[list[int], list[int]]], batch_size: int
) -> Iterator[list[tuple[int, float]]]:
    """(row index, fluency) pairs, one batch of one prompt's distinct completions per forward (any
    order). Identical rows are computed once: in a gallery many vectors leave a prompt's answer
    exactly as it was."""
    for head, tails in _distinct_tails(rows).items():
        # Similar lengths together: less padding to compute.
        members = sorted(tails, key=len)
        done = 0
        for values in _fluency_of_prompt(lm, list(head), [list(t) for t in members], batch_size):
            yield [
                (i, v)
                for t, v in zip(members[done : done + len(values)], values, strict=True)
                for i in tails[t]
            ]
            done += len(values)


def _distinct_tails(
    rows: Sequence[tuple[list[int], list[int]]],
) -> dict[tuple[int, ...], dict[tuple[int, ...], list[int]]]:
    """Per prompt (its token ids), per distinct completion, the rows that hold it."""
    by_head: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (head, tail) in enumerate(rows):
        by_head[tuple(head)][tuple(tail)].append(i)
    return by_head


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


# Scoring as units for a compute loop: yields (done, total) between units, returns the scores.
ScoreSteps = Generator[tuple[int, int], None, list["Scores"]]
EMBED_CHUNK = 32  # texts embedded per unit


def score_steps(
    lm: LoadedModel,
    embedder: Embedder,
    inputs: Sequence[ScoreInput],
    *,
    thresholds: Thresholds | None = None,
    batch_size: int = FLUENCY_BATCH,
) -> ScoreSteps:
    """Score every input, one unit at a time: a chunk of embeddings or one fluency batch per `next()`
    (each yields (units done, units in all)), so a worker can answer chat between two units."""
    if not inputs:
        return []
    texts = [s.text for s in inputs]
    # Each distinct text is embedded once (steered and unsteered alike).
    distinct = list(dict.fromkeys([*texts, *(s.unsteered for s in inputs)]))
    rows = _rows(lm, [s.prompt for s in inputs], texts)
    batches = sum(math.ceil(len(tails) / batch_size) for tails in _distinct_tails(rows).values())
    total = math.ceil(len(distinct) / EMBED_CHUNK) + batches
    done = 0
    pieces = []
    for lo in range(0, len(distinct), EMBED_CHUNK):
        pieces.append(embedder.encode(distinct[lo : lo + EMBED_CHUNK]))
        done += 1
        yield done, total
    embedded = dict(zip(distinct, torch.cat(pieces), strict=True))  # text -> [d]
    steered_emb = torch.stack([embedded[t] for t in texts])
    reference = embedded
    effects = []
    for i, s in enumerate(inputs):
        if s.text.strip() == s.unsteered.strip():
            effects.append(0.0)  # identical text: no embedding noise
        else:
            cos = float(steered_emb[i] @ reference[s.unsteered])
            effects.append(max(0.0, 1.0 - cos))
    fluencies = [0.0] * len(rows)
    for batch in _fluency_batches(lm, rows, batch_size):
        for i, value in batch:
            fluencies[i] = value
        done += 1
        yield done, total
    repeats = [repetition(tail) for _, tail in rows]
    beyond = beyond_random(effects, inputs)
    limits = thresholds or Thresholds()
    out = []
    for i, s in enumerate(inputs):
        identical = s.text.strip() == s.unsteered.strip()
        changes = [] if identical else differences(s.text, s.unsteered)
        out.append(
            Scores(
                effect=effects[i],
                fluency=fluencies[i],
                repetition=repeats[i],
                beyond_random=beyond[i],
                flag=flag(
                    effects[i],
                    fluencies[i],
                    repeats[i],
                    limits,
                    identical=identical,
                    changes=changes,
                    words=traits(s.text).words,
                    partner_words=traits(s.unsteered).words,
                ),
                embedding=steered_emb[i],
                changes=changes,
            )
        )
    return out


def score(
    lm: LoadedModel,
    embedder: Embedder,
    inputs: Sequence[ScoreInput],
    *,
    thresholds: Thresholds | None = None,
    batch_size: int = FLUENCY_BATCH,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Scores]:
    """Score every input at once; `on_batch(done, total)` is called after each unit."""
    return run_steps(
        score_steps(lm, embedder, inputs, thresholds=thresholds, batch_size=batch_size), on_batch
    )


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
