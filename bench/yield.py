"""How many real behaviours a default run yields on prompts nobody tuned for, against its random twin.

Runs of the discovery suite's test half (engine/discovery/suite.py: 4 prompts of 4 kinds each),
each trained at the product's defaults, beside its random twin (the same settings with 0 steps, so
the same R). Every vector's greedy gallery completion of each prompt is scored the product's way
(engine/discovery/findings.py: flags, beyond random, behaviours), and the bench reports:

- changed_fluent_learned / changed_fluent_random: shares of completions flagged changed and fluent;
- beyond_random_share: share of learned vectors whose mean beyond-random percentile over their
  run's prompts is at least 95 (bench/dct.py's definition);
- beyond_random_fluent_share (no target): the same, counting only vectors with fewer than half
  their completions flagged gibberish;
- behaviours_beyond_random_per_100: behaviours (clusters) with no random-twin member whose members
  are mostly changed and fluent, per 100 learned vectors;
- flags_agreement / changed_recall: the flags against the held-out rows of the hand-labelled set
  (tests/fixtures/flags_labelled.jsonl, rows with "part": "held-out"): the share that agree, and
  the share of those labelled changed that the flags call changed;
- second_reading_agreement (no target): how often a second blind reading of 100 labelled rows
  agrees with the first, about the ceiling of flags_agreement;
- beyond_random_share_interval, changed_fluent_vs_random_interval (no targets): 95% intervals, the
  Wilson interval over vectors and a bootstrap that resamples whole vectors (a vector's completions
  move together), so a figure near its target says whether more vectors could settle it.

Every vector, learned and twin, is read where the app scores it: probed for its working scale on
the run's first prompts (engine/refine/working_scale.py) and completed and scored there, or at x1
when its working scale is above 1. `--ladder 1` reads every vector at x1 (how this bench measured
before the app probed working scales), `--ladder 1,1.5,2,3 --above-x1` the way the app scored
before (at the working scale, up to x3); `--ladder` with other scales tries another ladder.

The baseline (the random twin) is measured in the same run. `--half tuning` measures the tuning
half instead: settings are chosen there, never on the test half. `--radius share:0.16` (a share of
the residual norm) or `--radius value:9.5` runs a candidate R instead of the default, and
`--spec positions=last:3 --spec p=4` other MELBO settings (any MelboSpec field) for learned and twin.
`--probe-tokens 32` probes working scales with longer completions (the app's probe reads 24 tokens).
`--run-size 1` trains runs of one prompt each (a first run's shape: *Start here* gives one prompt).
`--seed 1` trains other vectors and twins; `--rescore A.jsonl B.jsonl` scores runs saved with
`--save` again and pools them (one setting at two seeds: 48 vectors in quick mode, where one seed's
24 move beyond_random_share by up to 0.2).
Last line: one JSON object (bench/verdict.py), with "targets": {name: met}.
"""

from __future__ import annotations

import argparse
import json
import random as rand
import sys
import time
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.* importable
from bench.common import (
    BEYOND,
    ScoredRun,
    load_runs,
    log,
    save_runs,
    scored_run,
    spec_option,
    threads,
    wilson,
)
from bench.verdict import Target, report
from engine.discovery import suite
from engine.discovery.embedder import Embedder
from engine.discovery.scores import ScoreInput, score
from engine.models import LoadedModel, load_model
from engine.refine.working_scale import LADDER
from engine.refine.working_scale import TOKENS as PROBE_TOKENS

LABELLED = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "flags_labelled.jsonl"
AS_FLAG = {"unchanged": "unchanged", "rephrase": "rephrase", "gibberish": "gibberish", "changed": ""}

# What a default run should yield (stated here, checked at the end of every run).
TARGETS = (
    Target("changed_fluent_learned", ">=", 0.40),
    Target("changed_fluent_vs_random", ">=", 4, note="learned over the twin's share"),
    Target("beyond_random_share", ">=", 0.25),
    Target("behaviours_beyond_random_per_100", ">=", 15),
    Target("flags_agreement", ">=", 0.90),
    Target("changed_recall", ">=", 0.85),
)


def radius_option(text: str | None) -> dict[str, Any]:
    """MelboSpec fields for a candidate R: none (the default), a share of the norm, or a value."""
    if not text or text == "default":
        return {}
    kind, _, value = text.partition(":")
    if kind == "share":
        return {"radius_fraction": float(value)}
    if kind == "value":
        return {"radius": float(value)}
    raise SystemExit(f"--radius is default, share:X or value:X, got {text!r}")


def run_figures(runs: list[ScoredRun]) -> dict[str, Any]:
    learned = [s for r in runs for c, s in zip(r.completions, r.found.scores, strict=True) if not c.random]
    random = [s for r in runs for c, s in zip(r.completions, r.found.scores, strict=True) if c.random]
    n_vectors = sum(r.n for r in runs)
    # Each learned vector's mean beyond-random percentile, and whether most of its completions
    # broke: a vector that breaks the model moves the embedding further than any random one, so
    # beyond random alone also counts broken vectors.
    beyond: list[float] = []
    beyond_fluent = 0
    for r in runs:
        broken: dict[Any, list[bool]] = {}
        for c, s in zip(r.completions, r.found.scores, strict=True):
            if not c.random:
                broken.setdefault(c.vector, []).append(s.flag == "gibberish")
        for vector, p in r.per_vector_beyond().items():
            beyond.append(p)
            beyond_fluent += p >= BEYOND and 2 * sum(broken[vector]) < len(broken[vector])
    n_beyond = sum(p >= BEYOND for p in beyond)
    real = 0
    for r in runs:
        for b in r.found.behaviours:
            fluent = sum(r.found.scores[i].flag == "" for i in b.members)
            if b.kind == "cluster" and b.vectors and not b.random_vectors and 2 * fluent >= b.size:
                real += 1

    def share(rows: list[Any], flag: str) -> float:
        return sum(s.flag == flag for s in rows) / max(1, len(rows))

    return {
        "changed_fluent_learned": round(share(learned, ""), 4),
        "changed_fluent_random": round(share(random, ""), 4),
        "gibberish_learned": round(share(learned, "gibberish"), 4),
        "gibberish_random": round(share(random, "gibberish"), 4),
        "rephrase_learned": round(share(learned, "rephrase"), 4),
        "unchanged_learned": round(share(learned, "unchanged"), 4),
        "empty_learned": sum(not c.text.strip() for r in runs for c in r.completions if not c.random),
        "beyond_random_share": round(n_beyond / max(1, len(beyond)), 4),
        "beyond_random_share_interval": [round(x, 3) for x in wilson(n_beyond, len(beyond))],
        "beyond_random_fluent_share": round(beyond_fluent / max(1, len(beyond)), 4),
        "behaviours_beyond_random": real,
        "behaviours_beyond_random_per_100": round(100 * real / max(1, n_vectors), 2),
        "learned_vectors": n_vectors,
        "completions": len(learned) + len(random),
        "radius": [round(r.radius, 3) for r in runs],
        "radius_relative": [round(r.radius / r.residual_norm, 4) for r in runs],
        "mean_interest": round(fmean(v for r in runs for v in r.found.interest.values()), 4),
        "working_scales": scale_counts(runs),
    }


def ratio_interval(runs: list[ScoredRun], resamples: int = 2000, seed: int = 0) -> list[float] | None:
    """95% bootstrap interval of changed_fluent_vs_random: learned and twin vectors are drawn again
    with replacement, each with all its completions (None when a draw can have no random change)."""
    by_vector: dict[tuple[bool, int, Any], list[bool]] = {}
    for k, r in enumerate(runs):
        for c, s in zip(r.completions, r.found.scores, strict=True):
            by_vector.setdefault((c.random, k, c.vector), []).append(s.flag == "")
    sides = [[v for (twin, *_), v in by_vector.items() if twin == side] for side in (False, True)]
    if not all(sides):
        return None
    pick = rand.Random(seed)
    ratios = []
    for _ in range(resamples):
        learned, twin = ([c for v in pick.choices(side, k=len(side)) for c in v] for side in sides)
        if not any(twin):
            return None
        ratios.append((sum(learned) / len(learned)) / (sum(twin) / len(twin)))
    ratios.sort()
    return [round(ratios[int(0.025 * resamples)], 2), round(ratios[int(0.975 * resamples) - 1], 2)]


def scale_counts(runs: list[ScoredRun]) -> dict[str, dict[str, int]]:
    """How many learned and twin vectors were read at each scale."""
    out: dict[str, dict[str, int]] = {"learned": {}, "random": {}}
    for r in runs:
        for vector, scale in (r.scales or {}).items():
            side = out["random" if str(vector).startswith("r") else "learned"]
            side[f"{scale:g}"] = side.get(f"{scale:g}", 0) + 1
    return out


def flags_figures(lm: LoadedModel, embedder: Embedder, path: Path = LABELLED) -> dict[str, Any]:
    """The flags against the hand-labelled rows set aside for measuring them (part: held-out)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    held = [r for r in rows if r.get("part") == "held-out"]
    inputs = [ScoreInput(r["prompt"], r["text"], r["unsteered"], r["kind"] == "random") for r in held]
    flags = [s.flag for s in score(lm, embedder, inputs)]
    agree = [f == AS_FLAG[r["label"]] for f, r in zip(flags, held, strict=True)]
    changed = [f == "" for f, r in zip(flags, held, strict=True) if r["label"] == "changed"]
    read_twice = [r for r in rows if "second_label" in r]
    return {
        "flags_agreement": round(sum(agree) / max(1, len(agree)), 4),
        "changed_recall": round(sum(changed) / max(1, len(changed)), 4),
        "labelled_held_out": len(held),
        "labelled_changed": len(changed),
        # How often the reader's two readings of the same rows agree (rows of both parts): about the
        # most agreement flags can be expected to reach with one reading.
        "second_reading_agreement": round(
            sum(r["second_label"] == r["label"] for r in read_twice) / max(1, len(read_twice)), 4
        ),
        "second_reading_rows": len(read_twice),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 runs of 4 vectors, 32 tokens")
    parser.add_argument("--half", default="test", choices=["test", "tuning"])
    parser.add_argument("--vectors", type=int, help="vectors per run (default 8, a run's default; --quick 4)")
    parser.add_argument("--runs", type=int, help="runs of the half (default all 6, --quick 2)")
    parser.add_argument(
        "--run-size",
        type=int,
        default=suite.RUN_SIZE,
        help=f"prompts per run (default {suite.RUN_SIZE}; 1: single-prompt runs, as a first run is)",
    )
    parser.add_argument("--tokens", type=int, help="gallery tokens (default 48, --quick 32)")
    parser.add_argument("--radius", help="default | share:X | value:X (a candidate R)")
    parser.add_argument(
        "--ladder", help="the working-scale ladder, comma-separated (default: the app's; 1: x1 only)"
    )
    parser.add_argument(
        "--probe-tokens",
        type=int,
        default=PROBE_TOKENS,
        help=f"the working-scale probe's completion length (default {PROBE_TOKENS}, the app's)",
    )
    parser.add_argument(
        "--above-x1", action="store_true", help="score at the working scale even above x1 (the app before)"
    )
    parser.add_argument(
        "--spec",
        action="append",
        metavar="KEY=VALUE",
        help="another MELBO setting (repeatable): p=4, positions=last:3",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--save", type=Path, help="write every completion as JSONL (for --rescore)")
    parser.add_argument(
        "--rescore",
        type=Path,
        nargs="+",
        help="score completions saved by --save again, no training; several files pool their runs "
        "(the same setting at other seeds: more vectors, a figure nearer its mean)",
    )
    args = parser.parse_args()
    threads(args.threads)
    n = args.vectors or (4 if args.quick else 8)
    tokens = args.tokens or (32 if args.quick else 48)
    if args.probe_tokens < 1:
        raise SystemExit(f"--probe-tokens must be at least 1, got {args.probe_tokens}")
    probe_tokens = min(args.probe_tokens, tokens)  # the probe reads at most the gallery's length
    if not 1 <= args.run_size <= len(suite.KINDS):
        raise SystemExit(f"--run-size must be between 1 and {len(suite.KINDS)}, got {args.run_size}")
    missing = [str(path) for path in args.rescore or () if not path.is_file()]
    if missing:
        raise SystemExit(f"--rescore: no such file: {', '.join(missing)}")
    groups = suite.runs(args.half, args.run_size)[: args.runs or (2 if args.quick else None)]
    began = time.perf_counter()
    lm = load_model("default", device="cpu")
    embedder = Embedder()
    spec = {"n_vectors": n, "seed": args.seed, **radius_option(args.radius), **spec_option(args.spec)}
    ladder = tuple(float(x) for x in args.ladder.split(",")) if args.ladder else LADDER
    runs: list[ScoredRun] = []
    if args.rescore:
        for path in args.rescore:
            log(f"scoring the completions in {path} again")
            runs += load_runs(lm, embedder, path)
        n = runs[0].n if runs else n
    for k, prompts in enumerate([] if args.rescore else groups):
        log(f"run {k + 1}/{len(groups)}: {n} vectors and the twin on {len(prompts)} {args.half} prompts")
        runs.append(
            scored_run(
                lm,
                embedder,
                prompts,
                spec,
                tokens=tokens,
                ladder=ladder,
                above_x1=args.above_x1,
                probe_tokens=probe_tokens,
            )
        )
        log(f"run {k + 1}: R {runs[-1].radius:.2f}, {time.perf_counter() - began:.0f} s so far")
        if args.save:
            save_runs(runs, args.save)  # after every run: a long bench keeps what it has done
    figures = {**run_figures(runs), **flags_figures(lm, embedder)}
    learned, random = figures["changed_fluent_learned"], figures["changed_fluent_random"]
    figures["changed_fluent_vs_random"] = (
        round(learned / random, 2) if random else (None if not learned else float("inf"))
    )
    figures["changed_fluent_vs_random_interval"] = ratio_interval(runs)
    result = {
        "half": args.half,
        "quick": args.quick,
        "radius_choice": "rescored" if args.rescore else args.radius or "default",
        "spec": spec_option(args.spec),
        "ladder": list(ladder),
        "scored_above_x1": args.above_x1,
        "probe_tokens": probe_tokens,
        "runs": len(runs),
        "prompts_per_run": args.run_size,
        "vectors_per_run": n,
        "tokens": tokens,
        **figures,
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - began),
    }
    report("yield", result, TARGETS)


if __name__ == "__main__":
    main()
