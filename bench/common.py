"""What several benches share: a timestamped log, greedy gallery completions, a learned run beside
its random twin scored the product's way, binomial intervals and the `--spec` option's MELBO settings."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from engine.decode.generate import GenerationRequest, generate
from engine.discovery.embedder import Embedder
from engine.discovery.findings import Completion, Findings, find
from engine.errors import EngineError
from engine.methods.melbo import MelboResult, train_melbo
from engine.models import LoadedModel
from engine.refine.working_scale import PROBE_PROMPTS, scored_scale, working_scales
from engine.refine.working_scale import TOKENS as PROBE_TOKENS
from engine.specs import MelboSpec

TOKENS = 48  # the app's gallery length
BEYOND = 95.0  # mean beyond-random percentile from which a vector counts as beyond its twin


def log(message: str) -> None:
    print(
        f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {message}", file=sys.stderr, flush=True
    )


def greedy(
    lm: LoadedModel,
    prompts: Sequence[str],
    block: int | None = None,
    vectors: Any = None,
    *,
    tokens: int = TOKENS,
    scale: float | Sequence[float] = 1.0,
    batch_size: int = 32,
) -> list[str]:
    """Greedy completions of every prompt, vector-major (one row per prompt when unsteered); `scale`
    is one for every vector or one per vector."""
    rows = [None] if vectors is None else list(vectors)
    scales = [float(scale)] * len(rows) if isinstance(scale, int | float) else [float(s) for s in scale]
    requests = [
        GenerationRequest(prompt=p, block=block, terms=() if v is None else ((v, k),), max_new_tokens=tokens)
        for v, k in zip(rows, scales, strict=True)
        for p in prompts
    ]
    return [r.text for r in generate(lm, requests, batch_size=batch_size)]


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate (95% for z = 1.96), as shares."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def per_100(hit: list[bool]) -> float:
    """Hits per 100 vectors."""
    return 100 * sum(hit) / len(hit) if hit else 0.0


def ci95_per_100(hit: list[bool]) -> list[float]:
    """The 95% Wilson interval of hits per 100 vectors."""
    return [round(100 * bound, 1) for bound in wilson(sum(hit), len(hit))]


def first_hit_seconds(found: list[bool], seconds: float, batch: int) -> float | None:
    """Training time up to the end of the batch holding the first hit (vectors train `batch` at a
    time, at an even cost per batch)."""
    first = next((i for i, h in enumerate(found) if h), None)
    if first is None:
        return None
    batches = -(-len(found) // batch)
    return round(seconds * (first // batch + 1) / batches, 1)


@dataclass
class ScoredRun:
    """One run's learned vectors and random twin on its prompts, scored and clustered together."""

    prompts: tuple[str, ...]
    radius: float
    residual_norm: float
    completions: list[Completion]  # learned rows first (vector-major), then the twin's
    found: Findings
    learned: MelboResult | None = None  # None when re-scored from saved completions
    twin: MelboResult | None = None
    scales: dict[Hashable, float] | None = None  # each vector's working scale, when probed

    @property
    def n(self) -> int:
        return len({c.vector for c in self.completions if not c.random})

    def per_vector_beyond(self) -> dict[Hashable, float]:
        """Each learned vector's mean beyond-random percentile over the run's prompts."""
        sums: dict[Hashable, list[float]] = {}
        for c, s in zip(self.completions, self.found.scores, strict=True):
            if not c.random:
                sums.setdefault(c.vector, []).append(float(s.beyond_random or 0.0))
        return {v: sum(x) / len(x) for v, x in sums.items()}


def scored_run(
    lm: LoadedModel,
    embedder: Embedder,
    prompts: Sequence[str],
    spec: dict[str, Any],
    *,
    tokens: int = TOKENS,
    ladder: Sequence[float] | None = None,
    above_x1: bool = False,
    probe_tokens: int = PROBE_TOKENS,
) -> ScoredRun:
    """Train a run with `spec` (MelboSpec fields besides the prompts) and its random twin (the same
    settings, method random), take greedy completions of both on the run's prompts, and score them
    together with the product's findings (flags, beyond random, behaviours, order).

    With a `ladder`, every vector (learned and twin) is first probed for its working scale on the
    run's first prompts, as the app's gallery does, and its completions are taken and scored where
    the app scores them (`scored_scale`: the working scale, at most x1; `above_x1`: the working
    scale itself, as the app scored before). `probe_tokens`: the probe's completion length (at
    most the gallery's)."""
    prompts = tuple(prompts)
    learned = train_melbo(lm, MelboSpec(prompts=prompts, **spec))
    twin = train_melbo(lm, MelboSpec(prompts=prompts, **{**spec, "method": "random"}))
    if abs(twin.radius - learned.radius) > 1e-6 * learned.radius:
        raise AssertionError(f"the twin's R {twin.radius} differs from the run's {learned.radius}")
    unsteered = dict(zip(prompts, greedy(lm, prompts, tokens=tokens), strict=True))
    items: list[Completion] = []
    scales: dict[Hashable, float] = {}
    for kind, result in (("l", learned), ("r", twin)):
        at = [1.0] * len(result.vectors)
        if ladder is not None:
            probe = list(dict.fromkeys(prompts))[:PROBE_PROMPTS]
            probed = working_scales(
                lm, learned.source, result.vectors, probe, ladder=ladder, tokens=min(probe_tokens, tokens)
            )
            at = [w.scale if above_x1 else scored_scale(w.scale) for w in probed]
        scales.update({f"{kind}{i}": k for i, k in enumerate(at)})
        texts = greedy(lm, prompts, learned.source, result.vectors, tokens=tokens, scale=at)
        for i, text in enumerate(texts):
            prompt = prompts[i % len(prompts)]
            items.append(
                Completion(f"{kind}{i // len(prompts)}", prompt, text, unsteered[prompt], random=kind == "r")
            )
    found = find(lm, embedder, items)
    return ScoredRun(
        prompts,
        learned.radius,
        learned.residual_norm,
        items,
        found,
        learned,
        twin,
        scales if ladder else None,
    )


def save_runs(runs: Sequence[ScoredRun], path: Path) -> None:
    """Every completion of the runs as JSONL (enough to score them again with other flags)."""
    with path.open("w", encoding="utf-8") as fh:
        for k, r in enumerate(runs):
            for c in r.completions:
                row = {"run": k, "radius": r.radius, "residual_norm": r.residual_norm, **asdict(c)}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_runs(lm: LoadedModel, embedder: Embedder, path: Path) -> list[ScoredRun]:
    """Runs saved by `save_runs`, scored again with the code as it is now."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for k in sorted({r["run"] for r in rows}):
        mine = [r for r in rows if r["run"] == k]
        items = [
            Completion(r["vector"], r["prompt"], r["text"], r["unsteered"], random=r["random"]) for r in mine
        ]
        prompts = tuple(dict.fromkeys(c.prompt for c in items))
        found = find(lm, embedder, items)
        out.append(ScoredRun(prompts, mine[0]["radius"], mine[0]["residual_norm"], items, found))
    return out


def threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def spec_option(pairs: list[str] | None) -> dict[str, Any]:
    """MelboSpec fields from KEY=VALUE pairs; a value that reads as JSON (4, 1.5, true) is taken as such."""
    fields = {f.name for f in dataclasses.fields(MelboSpec)} - {"prompts", "n_vectors", "seed", "method"}
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            known = ", ".join(sorted(fields))
            raise SystemExit(f"--spec takes KEY=VALUE with KEY one of {known}, got {pair!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    try:
        MelboSpec(prompts=("a prompt",), **out)  # a bad value stops the bench before any work
    except (EngineError, TypeError) as err:
        raise SystemExit(f"--spec: {err}") from None
    return out
