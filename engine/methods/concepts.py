"""Concepts: a direction at a block from two prompt sets, with the concept and without it.

Each prompt is read at block s's output (`hidden_states[s + 1]`, where a vector at block s is
added) over its user turn (its tokens, then the generation prompt) and pooled to one vector [d]:
- diffmean (default): each prompt's mean over its user turn; the concept is the mean of the with
  set's minus the mean of the without set's;
- caa: the last prompt position alone (where the answer starts), then the same difference;
- pca: user-turn means, paired by index (with[i], without[i]); the first principal direction of
  the paired differences, uncentred (centring would take out their mean, the very difference the
  pairs were written to show), its sign towards the with set.

A concept is a detector: a prompt's score is the largest projection of its user-turn tokens on the
unit direction (uncentred; for caa, the last position's), and it says "present" above the
threshold, the midpoint of the two sets' mean scores. The largest token rather than the mean
because a concept is usually a few tokens of a prompt: on the tiny test model a marker of six
tokens was told apart on held-out prompts at ROC AUC 0.87 by the mean and 1.00 by the max.
It steers like any vector at its block. Its norm by default is the raw difference of the means
(for pca: the mean paired difference along it), so that at scale 1 it moves an average prompt
without the concept to where prompts with it sit; norm="radius" rescales it to the model's default
MELBO R at that block (engine/methods/melbo.py RADIUS_FRACTION × the median residual norm there).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from engine.errors import EngineError
from engine.methods.melbo import RADIUS_FRACTION
from engine.models import LoadedModel
from engine.prompts import encode_prompts
from engine.specs import _int_range, _Spec, default_source
from engine.steer.capture import block_output, sequence_outputs
from engine.units import run_steps

MAX_CONCEPT_PROMPTS = 512  # per set
CONCEPT_BATCH = 16  # prompts per forward (one unit of work)
METHODS = ("diffmean", "caa", "pca")

# Units for a compute loop: ("activations", prompts done, prompts in all).
ConceptSteps = Generator[tuple[str, int, int], None, "Concept"]


@dataclass(frozen=True)
class ConceptSpec(_Spec):
    positive: tuple[str, ...]  # prompts with the concept
    negative: tuple[str, ...]  # prompts without it (paired by index with positive for pca)
    model: str = "default"
    block: int | None = None  # the block whose output is read and steered; None: from depth
    method: Literal["diffmean", "caa", "pca"] = "diffmean"
    norm: Literal["raw", "radius"] = "raw"  # raw: the difference's own norm; radius: MELBO's default R
    name: str = ""

    def __post_init__(self) -> None:
        for which, prompts in (("with", self.positive), ("without", self.negative)):
            _int_range(f"prompts {which} the concept", len(prompts), 2, MAX_CONCEPT_PROMPTS)
            if any(not p.strip() for p in prompts):
                raise EngineError("prompts must not be empty")
        if self.method not in METHODS:
            raise EngineError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.norm not in ("raw", "radius"):
            raise EngineError(f"norm must be raw or radius, got {self.norm!r}")
        if self.method == "pca" and len(self.positive) != len(self.negative):
            raise EngineError(
                f"pca pairs the prompts by index: give as many without the concept ({len(self.negative)}) "
                f"as with it ({len(self.positive)})"
            )
        if len(self.name) > 200:
            raise EngineError("a concept's name is at most 200 characters")

    def source(self, n_blocks: int) -> int:
        block = default_source(n_blocks) if self.block is None else self.block
        if not 0 <= block < n_blocks:
            raise EngineError(f"block {block} is out of range: the model has blocks 0..{n_blocks - 1}")
        return block


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """ROC AUC: the chance that a random with-prompt scores above a random without-prompt."""
    pos, neg = torch.tensor(list(positive)), torch.tensor(list(negative))
    above = (pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()
    return float(above.mean())


@dataclass
class Concept:
    vector: Tensor  # [d] float32 at the concept's norm
    block: int
    method: str
    threshold: float  # a prompt's score above it: the concept is present
    raw_norm: float  # the difference's own norm
    radius: float  # the model's default MELBO R at this block
    positive_scores: list[float]  # the training prompts' scores
    negative_scores: list[float]
    name: str = ""

    @property
    def unit(self) -> Tensor:
        return self.vector / self.vector.norm().clamp_min(1e-30)

    @property
    def accuracy(self) -> float:
        right = sum(s > self.threshold for s in self.positive_scores)
        right += sum(s <= self.threshold for s in self.negative_scores)
        return right / (len(self.positive_scores) + len(self.negative_scores))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (the vector left out: it travels as float32 bytes like any vector);
        `Concept.from_dict(vector, it)` gives the concept back."""
        n_pos, n_neg = len(self.positive_scores), len(self.negative_scores)
        return {
            "name": self.name,
            "block": self.block,
            "method": self.method,
            "norm": float(self.vector.norm()),
            "raw_norm": self.raw_norm,
            "radius": self.radius,
            "threshold": self.threshold,
            "accuracy": self.accuracy,
            "auc": auc(self.positive_scores, self.negative_scores),
            "positive_mean": sum(self.positive_scores) / n_pos,
            "negative_mean": sum(self.negative_scores) / n_neg,
            "positive": n_pos,
            "negative": n_neg,
            "positive_scores": self.positive_scores,
            "negative_scores": self.negative_scores,
        }

    @classmethod
    def from_dict(cls, vector: Tensor, data: dict[str, Any]) -> Concept:
        """A stored concept: its vector [d] and what `to_dict` gave."""
        fields = ("block", "method", "threshold", "raw_norm", "radius", "positive_scores", "negative_scores")
        missing = [f for f in fields if f not in data]
        if missing:
            raise EngineError(f"a stored concept lacks {', '.join(missing)}")
        if data["method"] not in METHODS or vector.dim() != 1:
            raise EngineError("a stored concept needs a 1-D vector and one of the known methods")
        return cls(
            vector.detach().float(),
            int(data["block"]),
            str(data["method"]),
            float(data["threshold"]),
            float(data["raw_norm"]),
            float(data["radius"]),
            [float(s) for s in data["positive_scores"]],
            [float(s) for s in data["negative_scores"]],
            str(data.get("name", "")),
        )


def user_turn_steps(
    lm: LoadedModel, prompts: Sequence[str], block: int, *, batch_size: int = CONCEPT_BATCH
) -> Generator[tuple[str, int, int], None, list[Tensor]]:
    """Each prompt's residuals at block s over its user turn: a float16 [T_i, d] each (the last
    row is the last prompt position)."""
    out: list[Tensor] = []
    for lo in range(0, len(prompts), batch_size):
        batch = encode_prompts(lm.tokenizer, list(prompts[lo : lo + batch_size]))
        h = block_output(lm.model, block, batch.input_ids, batch.attention_mask).cpu()  # [B, T, d]
        real = batch.attention_mask.bool()
        user = batch.user_mask & real  # [B, T]
        if batch.unmatched:  # the template changed the message: every real token but the first
            user = real & (batch.attention_mask.cumsum(dim=1) > 1)
        out += [h[i][user[i]].half() for i in range(h.shape[0])]
        yield "activations", min(lo + batch_size, len(prompts)), len(prompts)
    return out


def _pooled(tokens: list[Tensor], how: str) -> Tensor:
    """[P, d] float32: each prompt's user-turn mean, or its last position for caa."""
    return torch.stack([t[-1].float() if how == "caa" else t.float().mean(dim=0) for t in tokens])


def _scores(tokens: list[Tensor], unit: Tensor, how: str) -> list[float]:
    """Each prompt's largest user-turn projection on `unit` (caa: its last position's)."""
    return [float(t[-1].float() @ unit) if how == "caa" else float((t.float() @ unit).max()) for t in tokens]


def concept_steps(lm: LoadedModel, spec: ConceptSpec, *, batch_size: int = CONCEPT_BATCH) -> ConceptSteps:
    """A concept's direction, one batch of prompts per `next()`; returns the Concept."""
    block = spec.source(lm.info.n_blocks)
    prompts = (*spec.positive, *spec.negative)
    tokens = yield from user_turn_steps(lm, prompts, block, batch_size=batch_size)
    pooled = _pooled(tokens, spec.method)
    pos, neg = pooled[: len(spec.positive)], pooled[len(spec.positive) :]  # [P+, d], [P-, d]
    if spec.method == "pca":
        diffs = pos - neg  # [pairs, d]
        _, _, vh = torch.linalg.svd(diffs.double(), full_matrices=False)
        unit = vh[0].float()
        if float((diffs @ unit).mean()) < 0:
            unit = -unit
        raw = float((diffs @ unit).mean())
        direction = unit * raw
    else:
        direction = pos.mean(dim=0) - neg.mean(dim=0)
        raw = float(direction.norm())
    if raw <= 0 or not torch.isfinite(direction).all():
        raise EngineError("the two prompt sets read the same at this block: no direction between them")
    radius = RADIUS_FRACTION * float(torch.cat([t.float().norm(dim=1) for t in tokens]).median())
    vector = direction if spec.norm == "raw" else direction * (radius / raw)
    unit = direction / raw
    scores = _scores(tokens, unit, spec.method)
    pos_scores, neg_scores = scores[: len(spec.positive)], scores[len(spec.positive) :]
    threshold = (sum(pos_scores) / len(pos_scores) + sum(neg_scores) / len(neg_scores)) / 2
    return Concept(
        vector.float(), block, spec.method, threshold, raw, radius, pos_scores, neg_scores, spec.name
    )


def train_concept(lm: LoadedModel, spec: ConceptSpec) -> Concept:
    return run_steps(concept_steps(lm, spec))


def _answer_residuals(
    lm: LoadedModel, prompts: Sequence[str], answers: Sequence[str], block: int, batch_size: int
) -> list[Tensor]:
    """Residuals at block s over each answer's tokens, the answer read after its rendered prompt:
    a float16 [T_i, d] each (an empty answer: the last prompt position)."""
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    out: list[Tensor] = []
    for lo in range(0, len(prompts), batch_size):
        rows, starts = [], []
        for prompt, answer in zip(prompts[lo : lo + batch_size], answers[lo : lo + batch_size], strict=True):
            head = encode_prompts(lm.tokenizer, [prompt]).input_ids[0].tolist()
            rows.append(head + list(lm.tokenizer(answer, add_special_tokens=False)["input_ids"]))
            starts.append(min(len(head), len(rows[-1]) - 1) if answer else len(head) - 1)
        outputs = sequence_outputs(lm.model, block, rows, pad)  # [T_i, d] each
        out += [h[start:].half() for h, start in zip(outputs, starts, strict=True)]
    return out


def concept_scores(
    lm: LoadedModel,
    concept: Concept,
    prompts: Sequence[str],
    answers: Sequence[str] | None = None,
    *,
    batch_size: int = CONCEPT_BATCH,
) -> list[float]:
    """Each prompt's score, as the concept's own prompts were scored; with `answers` (one per
    prompt), each answer's instead: its largest projection over its own tokens, read after its
    prompt. The concept is present where the score exceeds `concept.threshold`."""
    if not prompts:
        return []
    if answers is not None:
        if len(answers) != len(prompts):
            raise EngineError(f"give one answer per prompt: {len(answers)} answers, {len(prompts)} prompts")
        tokens = _answer_residuals(lm, prompts, answers, concept.block, batch_size)
        return _scores(tokens, concept.unit, "max")
    tokens = run_steps(user_turn_steps(lm, prompts, concept.block, batch_size=batch_size))
    return _scores(tokens, concept.unit, concept.method)
