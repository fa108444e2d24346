"""Each vector where it acts: the largest scale on a short ladder at which it still writes fluent text.

A run's vectors all have norm R, but one breaks the model below R and another barely acts before
3 R. The probe steers a short greedy completion of a prompt or two at every rung of a ladder
(0.5, 0.75, 1, 1.5, 2, 3 × the vector), all vectors and rungs decoded in one batch, and scores each
with the product's own fluency tests (engine/discovery/flags.py: the mean log-probability under
the unsteered model, repeated 3-grams, and a near-empty answer where the unsteered one had words).
A vector's working scale is the highest rung up to which every rung stayed fluent on every probe
prompt; a vector already broken at the first rung is read at x1 (the gallery's own scale).

Scoring reads a vector at its working scale only where that is below x1 (`scored_scale`): a vector
that breaks the model at R is judged where it still writes, but none is judged above R. Above it
the random twin's vectors change the answers about as often as learned ones (bench/yield.py on the
tuning half: changed and fluent 0.59 learned against 0.47 random when read up to x3, 0.66 against
0.22 when read at most at x1), so beyond-random scores and flags stop telling them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.decode.decoder import Decoder
from engine.decode.request import GenerationRequest, GenerationResult
from engine.discovery.flags import Thresholds, near_empty
from engine.discovery.scores import fluency_steps, repetition, token_ids
from engine.discovery.traits import traits
from engine.errors import EngineError
from engine.models import LoadedModel
from engine.units import run_steps

LADDER = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # multiples of the vector as stored
SCORED_UP_TO = 1.0  # scoring reads a vector at its working scale, but never above this
PROBE_PROMPTS = 2  # a run's first distinct prompts that the probe reads
TOKENS = 24  # long enough for a loop or a broken sentence to show, short enough to be cheap
DECODE_BATCH = 32

ProbeSteps = Generator[tuple[str, int, int], None, list["WorkingScale"]]


@dataclass(frozen=True)
class WorkingScale:
    """Where one vector acts: its working scale and what each rung of the ladder did."""

    scale: float  # the highest rung up to which every rung stayed fluent (the first rung if none did)
    broken_at: float | None  # the first rung that was not fluent on some probe prompt
    fluent: dict[float, bool] = field(default_factory=dict)  # per rung: fluent on every probe prompt
    fluency: dict[float, float] = field(default_factory=dict)  # per rung: the lowest mean log-prob

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "broken_at": self.broken_at,
            "fluent": [[k, v] for k, v in self.fluent.items()],
            "fluency": [[k, v] for k, v in self.fluency.items()],
        }


def _check(
    lm: LoadedModel, block: int, vectors: Tensor, prompts: Sequence[str], ladder: Sequence[float]
) -> None:
    if vectors.dim() != 2 or vectors.shape[1] != lm.info.width:
        raise EngineError(f"vectors must have shape [N, {lm.info.width}], got {tuple(vectors.shape)}")
    if not bool(torch.isfinite(vectors).all()):
        raise EngineError("the vectors contain NaN or infinite values")
    if not 0 <= block < lm.info.n_blocks:
        raise EngineError(f"block {block} is out of range: the model has blocks 0..{lm.info.n_blocks - 1}")
    if not prompts or not all(p.strip() for p in prompts):
        raise EngineError("give one or two non-empty probe prompts")
    if not ladder or any(not 0 < s < 1000 for s in ladder) or list(ladder) != sorted(set(ladder)):
        raise EngineError(f"the ladder must be increasing positive scales, got {list(ladder)}")


def working_scale_steps(
    lm: LoadedModel,
    block: int,
    vectors: Tensor,
    prompts: Sequence[str],
    *,
    ladder: Sequence[float] = LADDER,
    tokens: int = TOKENS,
    thresholds: Thresholds | None = None,
    seed: int = 0,
    batch_size: int = DECODE_BATCH,
) -> ProbeSteps:
    """The probe one unit per `next()` ("completions": a decode step; "fluency": a scoring batch),
    so a worker can answer chat between two; returns one WorkingScale per vector."""
    _check(lm, block, vectors, prompts, ladder)
    vectors = vectors.detach().float().cpu()
    limits = thresholds or Thresholds()
    decoder = Decoder(lm, max_rows=batch_size)
    for p, prompt in enumerate(prompts):  # greedy; the seed is there for a sampling decoder's sake
        decoder.add(("unsteered", p), GenerationRequest(prompt=prompt, max_new_tokens=tokens, seed=seed))
        for i, vector in enumerate(vectors):
            for k, scale in enumerate(ladder):
                request = GenerationRequest(
                    prompt=prompt, block=block, terms=((vector, scale),), max_new_tokens=tokens, seed=seed
                )
                decoder.add((i, k, p), request)
    total = len(decoder)
    results: dict[Any, GenerationResult] = {}
    while decoder:
        for key, result in decoder.step().finished:
            results[key] = result
        yield "completions", len(results), total
    cells = [(i, k, p) for i in range(len(vectors)) for k in range(len(ladder)) for p in range(len(prompts))]
    texts = [results[c].text for c in cells]
    steps = fluency_steps(lm, [prompts[p] for _, _, p in cells], texts)
    while True:
        try:
            done, total = next(steps)
        except StopIteration as end:
            logprobs: list[float] = end.value
            break
        yield "fluency", done, total
    partner = [traits(results[("unsteered", p)].text).words for p in range(len(prompts))]
    ok: dict[tuple[int, int], bool] = {}
    low: dict[tuple[int, int], float] = {}
    for (i, k, p), text, value in zip(cells, texts, logprobs, strict=True):
        fine = (
            value >= limits.gibberish_logprob
            and repetition(token_ids(lm, text)) <= limits.gibberish_repetition
            and not near_empty(traits(text).words, partner[p], limits)
        )
        ok[(i, k)] = ok.get((i, k), True) and fine
        low[(i, k)] = min(low.get((i, k), value), value)
    # Broken on the first rung: read where the gallery reads every vector (x1) if the ladder has it.
    fallback = 1.0 if 1.0 in ladder else float(ladder[0])
    out = []
    for i in range(len(vectors)):
        fluent = {float(s): ok[(i, k)] for k, s in enumerate(ladder)}
        broken = next((float(s) for s in ladder if not fluent[float(s)]), None)
        held = [float(s) for s in ladder if broken is None or s < broken]
        out.append(
            WorkingScale(
                scale=held[-1] if held else fallback,
                broken_at=broken,
                fluent=fluent,
                fluency={float(s): low[(i, k)] for k, s in enumerate(ladder)},
            )
        )
    return out


def scored_scale(working: float | None) -> float:
    """The scale at which scoring reads a vector: its working scale up to x1 (x1 when not probed)."""
    return min(SCORED_UP_TO, 1.0 if working is None else working)


def working_scales(
    lm: LoadedModel,
    block: int,
    vectors: Tensor,
    prompts: Sequence[str],
    *,
    ladder: Sequence[float] = LADDER,
    tokens: int = TOKENS,
    thresholds: Thresholds | None = None,
    seed: int = 0,
    batch_size: int = DECODE_BATCH,
    on_unit: Callable[[str, int, int], None] | None = None,
) -> list[WorkingScale]:
    """Each vector's working scale (the whole probe at once); `on_unit(phase, done, total)` after
    each unit."""
    steps = working_scale_steps(
        lm,
        block,
        vectors,
        prompts,
        ladder=ladder,
        tokens=tokens,
        thresholds=thresholds,
        seed=seed,
        batch_size=batch_size,
    )
    return run_steps(steps, on_unit)
