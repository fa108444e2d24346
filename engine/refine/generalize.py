"""Generalize a vector: train it further on more prompts, then compare it before and after on
prompts it was not trained on.

Training is MELBO's objective (fast mode, one vector at the same norm) warm-started from the
vector. The comparison has two halves: the objective on the held-out prompts (the training signal,
measured where it was not trained), and greedy completions of the held-out prompts under the vector
before and after, each scored against the unsteered completion of its prompt as a gallery is scored
(effect, fluency, repetition, flag; engine/discovery/scores.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import cosine_similarity

from engine.decode.decoder import Decoder
from engine.decode.request import GenerationRequest, GenerationResult
from engine.discovery.embedder import Embedder
from engine.discovery.scores import FLUENCY_BATCH, ScoreInput, Scores, score_steps
from engine.methods.melbo import MelboTrainer, VectorRecord
from engine.models import LoadedModel
from engine.refine.rpath import check_vector, warm_trainer
from engine.refine.scale_sweep import CHANGED, DECODE_BATCH, tagged
from engine.refine.specs import GeneralizeSpec
from engine.units import run_steps

# Units for a compute loop: (phase, units done, units in the phase), phase "training" (an optimizer
# step), "completions" (a decode step) or "scoring" (engine/discovery/scores.py).
GeneralizeSteps = Generator[tuple[str, int, int], None, "Generalized"]
WHICH = ("before", "after")


@dataclass(frozen=True)
class HeldOut:
    """One held-out prompt's completions: unsteered, and under the vector before and after."""

    prompt: str
    unsteered: GenerationResult
    before: GenerationResult
    after: GenerationResult
    before_scores: Scores
    after_scores: Scores


@dataclass
class Generalized:
    vector: Tensor  # [d] float32, the vector after training
    record: VectorRecord  # its training record (objective curve, steps, cosine with its start)
    source: int
    target: int
    radius: float
    cos_parent: float  # after with before
    objective: dict[str, float]  # before / after on the training prompts
    held_out_objective: dict[str, float]  # before / after on the held-out prompts
    held_out: list[HeldOut]

    def means(self, which: str) -> dict[str, Any]:
        """Mean scores and flag counts of the held-out completions before or after."""
        scores = [getattr(h, f"{which}_scores") for h in self.held_out]
        n = len(scores)
        return {
            "effect": sum(s.effect for s in scores) / n,
            "fluency": sum(s.fluency for s in scores) / n,
            "repetition": sum(s.repetition for s in scores) / n,
            "flags": dict(sorted(Counter(s.flag or CHANGED for s in scores).items())),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (what a worker sends back), vectors and embeddings left out."""

        def row(h: HeldOut, which: str) -> dict[str, Any]:
            result: GenerationResult = getattr(h, which)
            scores: Scores = getattr(h, f"{which}_scores")
            return {
                "text": result.text,
                "n_tokens": result.n_tokens,
                "finish_reason": result.finish_reason,
                **{k: v for k, v in scores.to_dict().items() if k != "beyond_random"},
            }

        return {
            "radius": self.radius,
            "cos_parent": self.cos_parent,
            "objective": self.objective,
            "held_out_objective": self.held_out_objective,
            "means": {w: self.means(w) for w in WHICH},
            "held_out": [
                {
                    "prompt": h.prompt,
                    "unsteered": {
                        "text": h.unsteered.text,
                        "n_tokens": h.unsteered.n_tokens,
                        "finish_reason": h.unsteered.finish_reason,
                    },
                    **{w: row(h, w) for w in WHICH},
                }
                for h in self.held_out
            ],
        }


def _objectives(
    lm: LoadedModel, spec: GeneralizeSpec, radius: float, prompts: tuple[str, ...], vectors: Tensor
) -> dict[str, float]:
    """The objective of vectors [2, d] (before, after) on these prompts."""
    problem = MelboTrainer(lm, spec.melbo(radius, lm.info.width, prompts)).problem
    values, _ = problem.final(vectors)
    return dict(zip(WHICH, (float(v) for v in values), strict=True))


def _completions(
    lm: LoadedModel, spec: GeneralizeSpec, block: int, vectors: Sequence[Tensor], batch_size: int
) -> Generator[tuple[str, int, int], None, dict[Any, GenerationResult]]:
    decoder = Decoder(lm, max_rows=batch_size)
    for p, prompt in enumerate(spec.held_out):
        decoder.add(("unsteered", p), GenerationRequest(prompt=prompt, max_new_tokens=spec.max_new_tokens))
        for which, vector in zip(WHICH, vectors, strict=True):
            request = GenerationRequest(
                prompt=prompt, block=block, terms=((vector, 1.0),), max_new_tokens=spec.max_new_tokens
            )
            decoder.add((which, p), request)
    total, results = len(decoder), {}
    while decoder:
        for key, result in decoder.step().finished:
            results[key] = result
        yield "completions", len(results), total
    return results


def generalize_steps(
    lm: LoadedModel,
    embedder: Embedder,
    vector: Tensor,
    spec: GeneralizeSpec,
    *,
    orthogonal_to: Tensor | None = None,
    batch_size: int = DECODE_BATCH,
) -> GeneralizeSteps:
    """Training, completions and scoring one unit per `next()`; returns the comparison.
    `orthogonal_to` [F, d]: vectors it stays orthogonal to while it trains (see engine/refine/rpath.py)."""
    vector = check_vector(lm, vector)
    radius = spec.radius if spec.radius is not None else float(vector.norm())
    start = vector * (radius / vector.norm())
    trainer = warm_trainer(lm, spec.melbo(radius, lm.info.width), start, orthogonal_to)
    source, target = trainer.problem.source, trainer.problem.target
    while not trainer.finished:
        trainer.step()
        batch = trainer.batch
        yield "training", 0 if batch is None else batch.steps, trainer.budget
    result = trainer.result()
    after, record = result.vectors[0], result.records[0]
    both = torch.stack([start, after])
    objective = _objectives(lm, spec, radius, spec.prompts, both)
    held_objective = _objectives(lm, spec, radius, spec.held_out, both)
    results = yield from _completions(lm, spec, source, [start, after], batch_size)
    n = len(spec.held_out)
    plain = [results[("unsteered", p)] for p in range(n)]
    inputs = [
        ScoreInput(spec.held_out[p], results[(which, p)].text, plain[p].text)
        for which in WHICH
        for p in range(n)
    ]
    scores = yield from tagged("scoring", score_steps(lm, embedder, inputs, batch_size=FLUENCY_BATCH))
    held = [
        HeldOut(
            prompt=spec.held_out[p],
            unsteered=plain[p],
            before=results[("before", p)],
            after=results[("after", p)],
            before_scores=scores[p],
            after_scores=scores[n + p],
        )
        for p in range(n)
    ]
    return Generalized(
        vector=after,
        record=record,
        source=source,
        target=target,
        radius=radius,
        cos_parent=float(cosine_similarity(after, start, dim=0)),
        objective=objective,
        held_out_objective=held_objective,
        held_out=held,
    )


def generalize(
    lm: LoadedModel,
    embedder: Embedder,
    vector: Tensor,
    spec: GeneralizeSpec,
    *,
    orthogonal_to: Tensor | None = None,
    batch_size: int = DECODE_BATCH,
    on_unit: Callable[[str, int, int], None] | None = None,
) -> Generalized:
    """The whole of it at once; `on_unit(phase, done, total)` after each unit."""
    steps = generalize_steps(lm, embedder, vector, spec, orthogonal_to=orthogonal_to, batch_size=batch_size)
    return run_steps(steps, on_unit)
