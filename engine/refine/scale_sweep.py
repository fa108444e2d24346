"""Refining a vector around what it does. A scale sweep: where along its own direction a vector
starts to change the answer, and where it breaks the model.

At each scale (a multiple of the vector as stored, so its norm is scale × |v|) the vector steers a
greedy completion of every prompt. Each completion is scored against the unsteered completion of
its prompt (effect, fluency, repetition and flag, as engine/discovery/scores.py and
engine/discovery/flags.py score a gallery), and the next-token KL at the prompt end is measured
(engine/steer/metrics.py). Two markers sum the sweep up, both looked for in order of |scale|:

- first change: the first scale at which most prompts' completions are not flagged unchanged;
- breaks: the first scale at which most prompts' completions are flagged gibberish.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from engine.decode.decoder import Decoder
from engine.decode.request import GenerationRequest, GenerationResult
from engine.discovery.embedder import Embedder
from engine.discovery.flags import Thresholds
from engine.discovery.scores import FLUENCY_BATCH, ScoreInput, Scores, score_steps
from engine.errors import EngineError
from engine.models import LoadedModel
from engine.prompts import encode_prompts
from engine.specs import ScaleSweepSpec
from engine.steer.metrics import next_token_kl
from engine.units import run_steps

T = TypeVar("T")
KL_ROWS = 64  # prompt rows per KL forward (a chunk of scales × every prompt)
DECODE_BATCH = 16  # completions decoded together
CHANGED = "changed"  # how the flag counts name "" (changed and still fluent)

# Units for a compute loop: (phase, units done, units in the phase) between two units, where the
# phase is "completions" (a decode step), "kl" (a chunk of scales) or "scoring" (engine/discovery/scores.py).
SweepSteps = Generator[tuple[str, int, int], None, "ScaleSweep"]


@dataclass(frozen=True)
class ScalePoint:
    """What the vector does at one scale, over the prompts."""

    scale: float
    effect: float  # mean cosine distance from the unsteered completion (0 = same meaning)
    fluency: float  # mean log-prob per token under the unsteered model
    repetition: float  # mean share of repeated token 3-grams
    kl: float  # next-token KL(steered ‖ unsteered) at the prompt end, mean over prompts
    flags: dict[str, int]  # prompts whose completion carries each flag ("changed": none applies)
    changed: bool  # most prompts' completions are not flagged unchanged
    broken: bool  # most prompts' completions are flagged gibberish

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "effect": self.effect,
            "fluency": self.fluency,
            "repetition": self.repetition,
            "kl": self.kl,
            "flags": dict(self.flags),
            "changed": self.changed,
            "broken": self.broken,
        }


@dataclass(frozen=True)
class SweepCompletion:
    prompt: str
    scale: float
    result: GenerationResult
    scores: Scores


@dataclass
class ScaleSweep:
    prompts: list[str]
    points: list[ScalePoint]  # one per scale, in the spec's order
    completions: list[SweepCompletion]  # prompt by prompt, each at every scale in the spec's order
    unsteered: list[GenerationResult]  # one per prompt
    first_change: float | None  # None: no scale of the sweep changed most completions
    breaks: float | None  # None: no scale of the sweep broke most completions

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (what a worker sends back), embeddings left out."""
        return {
            "points": [p.to_dict() for p in self.points],
            "first_change": self.first_change,
            "breaks": self.breaks,
            "completions": [
                {
                    "prompt": c.prompt,
                    "scale": c.scale,
                    "text": c.result.text,
                    "n_tokens": c.result.n_tokens,
                    "finish_reason": c.result.finish_reason,
                    **{k: v for k, v in c.scores.to_dict().items() if k != "beyond_random"},
                }
                for c in self.completions
            ],
            "unsteered": [
                {"prompt": p, "text": r.text, "n_tokens": r.n_tokens, "finish_reason": r.finish_reason}
                for p, r in zip(self.prompts, self.unsteered, strict=True)
            ],
        }


def tagged(
    phase: str, steps: Generator[tuple[int, int], None, T]
) -> Generator[tuple[str, int, int], None, T]:
    """Another generator's (done, total) units, labelled with a phase; its return value."""
    while True:
        try:
            done, total = next(steps)
        except StopIteration as end:
            return end.value
        yield phase, done, total


def _completions(
    lm: LoadedModel, vector: Tensor, spec: ScaleSweepSpec, batch_size: int
) -> Generator[tuple[str, int, int], None, dict[Any, GenerationResult]]:
    """Greedy completions: the unsteered one of each prompt, and the vector at each nonzero scale
    (scale 0 is bit-identical to no steering, so its completion is the unsteered one)."""

    def request(prompt: str, scale: float) -> GenerationRequest:
        steered = scale != 0.0
        return GenerationRequest(
            prompt=prompt,
            block=spec.block if steered else None,
            terms=((vector, scale),) if steered else (),
            max_new_tokens=spec.max_new_tokens,
        )

    decoder = Decoder(lm, max_rows=batch_size)
    for p, prompt in enumerate(spec.prompts):  # every check runs here, before any decoding
        decoder.add(("unsteered", p), request(prompt, 0.0))
        for k, scale in enumerate(spec.scales):
            if scale != 0.0:
                decoder.add((p, k), request(prompt, scale))
    total, results = len(decoder), {}
    while decoder:
        for key, result in decoder.step().finished:
            results[key] = result
        yield "completions", len(results), total
    return results


def _kl(
    lm: LoadedModel, vector: Tensor, spec: ScaleSweepSpec
) -> Generator[tuple[str, int, int], None, list[float]]:
    """Next-token KL at every scale, a chunk of scales (× every prompt) per unit."""
    batch = encode_prompts(lm.tokenizer, list(spec.prompts))
    deltas = torch.tensor(spec.scales, dtype=torch.float32)[:, None] * vector[None, :]  # [K, d]
    per = max(1, KL_ROWS // len(spec.prompts))
    chunks = range(0, len(spec.scales), per)
    out: list[float] = []
    for i, lo in enumerate(chunks):
        out += next_token_kl(lm.model, batch, spec.block, deltas[lo : lo + per], chunk=per).tolist()
        yield "kl", i + 1, len(chunks)
    return out


def _point(scale: float, kl: float, scores: Sequence[Scores]) -> ScalePoint:
    n = len(scores)
    flags = Counter(s.flag or CHANGED for s in scores)
    return ScalePoint(
        scale=scale,
        effect=sum(s.effect for s in scores) / n,
        fluency=sum(s.fluency for s in scores) / n,
        repetition=sum(s.repetition for s in scores) / n,
        kl=kl,
        flags=dict(sorted(flags.items())),
        changed=2 * (n - flags["unchanged"]) > n,
        broken=2 * flags["gibberish"] > n,
    )


def _first(points: Sequence[ScalePoint], which: Callable[[ScalePoint], bool]) -> float | None:
    """The smallest |scale| (the positive one on a tie) whose point passes `which`."""
    for point in sorted(points, key=lambda p: (abs(p.scale), p.scale < 0)):
        if which(point):
            return point.scale
    return None


def scale_sweep_steps(
    lm: LoadedModel,
    embedder: Embedder,
    vector: Tensor,
    spec: ScaleSweepSpec,
    *,
    thresholds: Thresholds | None = None,
    batch_size: int = DECODE_BATCH,
) -> SweepSteps:
    """The sweep one unit per `next()` (a decode step, a KL chunk, a scoring unit), so a worker can
    answer chat between two of them; returns the sweep."""
    width = lm.info.width
    if vector.shape != (width,):
        raise EngineError(f"the vector has shape {tuple(vector.shape)}, the model needs ({width},)")
    if not bool(torch.isfinite(vector).all()):
        raise EngineError("the vector contains NaN or infinite values")
    spec.check_block(lm.info)
    vector = vector.detach().float().cpu()
    results = yield from _completions(lm, vector, spec, batch_size)
    kls = yield from _kl(lm, vector, spec)
    unsteered = [results[("unsteered", p)] for p in range(len(spec.prompts))]
    cells = [
        (p, k, unsteered[p] if scale == 0.0 else results[(p, k)])
        for p in range(len(spec.prompts))
        for k, scale in enumerate(spec.scales)
    ]
    inputs = [ScoreInput(spec.prompts[p], r.text, unsteered[p].text) for p, _, r in cells]
    scores = yield from tagged(
        "scoring", score_steps(lm, embedder, inputs, thresholds=thresholds, batch_size=FLUENCY_BATCH)
    )
    by_scale: dict[int, list[Scores]] = {k: [] for k in range(len(spec.scales))}
    for (_, k, _), s in zip(cells, scores, strict=True):
        by_scale[k].append(s)
    points = [_point(scale, kls[k], by_scale[k]) for k, scale in enumerate(spec.scales)]
    completions = [
        SweepCompletion(spec.prompts[p], spec.scales[k], r, s)
        for (p, k, r), s in zip(cells, scores, strict=True)
    ]
    return ScaleSweep(
        prompts=list(spec.prompts),
        points=points,
        completions=completions,
        unsteered=unsteered,
        first_change=_first(points, lambda p: p.changed),
        breaks=_first(points, lambda p: p.broken),
    )


def scale_sweep(
    lm: LoadedModel,
    embedder: Embedder,
    vector: Tensor,
    spec: ScaleSweepSpec,
    *,
    thresholds: Thresholds | None = None,
    batch_size: int = DECODE_BATCH,
    on_unit: Callable[[str, int, int], None] | None = None,
) -> ScaleSweep:
    """The whole sweep at once; `on_unit(phase, done, total)` is called after each unit."""
    steps = scale_sweep_steps(lm, embedder, vector, spec, thresholds=thresholds, batch_size=batch_size)
    return run_steps(steps, on_unit)
