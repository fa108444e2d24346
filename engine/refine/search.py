"""Search around a vector for a stronger version of what a detector sees in its completions.

A (1 + λ) evolution strategy, elitist so it never returns anything worse than where it started:
the vector's score is the detector's mean score over its greedy completions of the prompts (1/0 per
completion for a regular expression, P(yes) for a judge). Each generation draws `population`
perturbations of the best vector so far (a random direction of norm sigma × |v| added, then the
sum put back at |v|, so every candidate has the vector's norm), completes the prompts with each,
scores them, and a candidate that scores strictly higher than the best becomes the new best. It
stops when `budget` candidates have been tried.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import cosine_similarity

from engine.decode.decoder import Decoder
from engine.decode.request import GenerationRequest
from engine.discovery.detectors import Detector, detect, judge_steps
from engine.models import LoadedModel
from engine.refine.rpath import check_vector
from engine.refine.scale_sweep import DECODE_BATCH
from engine.refine.specs import SearchSpec
from engine.units import run_steps

# Units for a compute loop: (phase, generation, candidates tried so far), phase "completions" (a
# decode step) or "judging" (a batch of yes/no questions).
SearchSteps = Generator[tuple[str, int, int], None, "SearchResult"]


@dataclass
class Candidate:
    vector: Tensor  # [d] float32, at the start vector's norm
    generation: int  # 0: the start vector
    score: float  # mean over the prompts
    scores: list[float]  # per prompt
    texts: list[str]  # its greedy completion of each prompt
    cos_start: float

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "vector"}


@dataclass
class SearchResult:
    start: Candidate
    best: list[Candidate]  # best first: the start and those that beat it, at most `keep`
    generations: list[dict[str, Any]] = field(default_factory=list)  # per generation: scores, best so far
    tried: int = 0  # perturbed candidates scored (the start not counted)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, vectors left out."""
        return {
            "start_score": self.start.score,
            "best_score": self.best[0].score,
            "tried": self.tried,
            "generations": self.generations,
            "best": [c.to_dict() for c in self.best],
        }


def perturb(center: Tensor, n: int, sigma: float, generator: torch.Generator) -> Tensor:
    """n candidates [n, d] around `center`: a random direction of norm sigma × |center| added, then
    each put back at |center|."""
    norm = center.norm()
    noise = torch.randn(n, center.shape[0], generator=generator)
    noise = noise / noise.norm(dim=1, keepdim=True) * (sigma * norm)
    moved = center[None] + noise
    return moved / moved.norm(dim=1, keepdim=True) * norm


def _scored(
    lm: LoadedModel,
    spec: SearchSpec,
    vectors: Tensor,
    generation: int,
    tried: int,
    batch_size: int,
) -> Generator[tuple[str, int, int], None, list[tuple[list[float], list[str]]]]:
    """Each vector's detector scores and completions on every prompt."""
    decoder = Decoder(lm, max_rows=batch_size)
    for j, vector in enumerate(vectors):
        for p, prompt in enumerate(spec.prompts):
            request = GenerationRequest(
                prompt=prompt, block=spec.block, terms=((vector, 1.0),), max_new_tokens=spec.max_new_tokens
            )
            decoder.add((j, p), request)
    texts: dict[Any, str] = {}
    while decoder:
        for key, result in decoder.step().finished:
            texts[key] = result.text
        yield "completions", generation, tried
    flat = [texts[(j, p)] for j in range(len(vectors)) for p in range(len(spec.prompts))]
    if spec.detector == "regex":
        values = detect(Detector("regex", spec.pattern), flat)
    else:
        values = yield from _judged(judge_steps(lm, spec.pattern, flat), generation, tried)
    n = len(spec.prompts)
    return [(values[j * n : (j + 1) * n], flat[j * n : (j + 1) * n]) for j in range(len(vectors))]


def _judged(
    steps: Generator[tuple[int, int], None, list[float]], generation: int, tried: int
) -> Generator[tuple[str, int, int], None, list[float]]:
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value
        yield "judging", generation, tried


def _candidate(
    vector: Tensor, start: Tensor, generation: int, found: tuple[Sequence[float], Sequence[str]]
) -> Candidate:
    scores, texts = found
    return Candidate(
        vector=vector,
        generation=generation,
        score=sum(scores) / len(scores),
        scores=list(scores),
        texts=list(texts),
        cos_start=float(cosine_similarity(vector, start, dim=0)),
    )


def search_steps(
    lm: LoadedModel, vector: Tensor, spec: SearchSpec, *, batch_size: int = DECODE_BATCH
) -> SearchSteps:
    """The search one unit per `next()` (a decode step or a judged batch); returns what it found."""
    start = check_vector(lm, vector)
    spec.check_block(lm.info)
    if spec.detector == "regex":
        Detector("regex", spec.pattern)  # refuses a broken expression before any decoding
    generator = torch.Generator().manual_seed(spec.seed)
    found = yield from _scored(lm, spec, start[None], 0, 0, batch_size)
    first = _candidate(start, start, 0, found[0])
    best, improved = first, [first]
    result = SearchResult(start=first, best=[first])
    result.generations.append(
        {"generation": 0, "tried": 0, "best": first.score, "mean": first.score, "max": first.score}
    )
    generation = 0
    while result.tried < spec.budget:
        generation += 1
        n = min(spec.population, spec.budget - result.tried)
        vectors = perturb(best.vector, n, spec.sigma, generator)
        found = yield from _scored(lm, spec, vectors, generation, result.tried, batch_size)
        result.tried += n
        candidates = [_candidate(v, start, generation, f) for v, f in zip(vectors, found, strict=True)]
        top = max(candidates, key=lambda c: c.score)
        if top.score > best.score:
            best = top
        improved += [c for c in candidates if c.score > first.score]
        result.generations.append(
            {
                "generation": generation,
                "tried": result.tried,
                "best": best.score,
                "mean": sum(c.score for c in candidates) / n,
                "max": top.score,
            }
        )
    # Best first; among equal scores the earlier (closer to where the search started).
    result.best = sorted(improved, key=lambda c: (-c.score, c.generation))[: spec.keep]
    return result


def search(
    lm: LoadedModel,
    vector: Tensor,
    spec: SearchSpec,
    *,
    batch_size: int = DECODE_BATCH,
    on_unit: Callable[[str, int, int], None] | None = None,
) -> SearchResult:
    """The whole search at once; `on_unit(phase, generation, tried)` after each unit."""
    steps = search_steps(lm, vector, spec, batch_size=batch_size)
    return run_steps(steps, on_unit)
