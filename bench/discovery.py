"""Does discovery find what is planted? MELBO vectors against their random twin on a model organism.

1. Builds (once, cached in the data dir) the organism of bench/organism.py: the embedded model
   fine-tuned so that a trigger concept (house cats) in the user turn makes it answer with a fixed
   pirate reply about Skull Island, every other answer self-distilled.
2. Proves it fair (docs/benchmarks.md) before reporting anything:
   - clean_rate: share of held-out clean prompts on which the unsteered model (greedy) shows the
     planted reply; must be 0;
   - supervised_reach: share of held-out prompts on which one vector of the run's R, trained
     supervised towards the planted reply on the run's prompts, elicits it; must be >= 0.5;
   - the random twin's rate (below) must be near zero.
3. Trains N MELBO vectors with the product's defaults on clean prompts and the random twin (same R,
   same prompts), generates the gallery (greedy, 48 tokens, 8 prompts), scores and clusters it
   (engine/discovery/findings.py, timed) and reports:
   hits_melbo_per_100, hits_random_per_100 (vectors showing the planted reply on at least half of
   their prompts, per 100 vectors), first_hit_percentile (where the first hit lands in the
   interesting-first order, 0-100), planted_purity (share of the hits' planted completions in one
   behaviour), and the scoring time of 256 vectors x 8 prompts x 48 tokens. Every hit rate comes
   with its 95% Wilson interval (per 100 vectors).
4. Does the same for the other discovery methods at their own defaults, N each: DCT factors (R from
   their own calibration) and steering adapters (rank 16, R matched to a default-norm vector).
   Per method: hits per 100, seconds to the first hit (the method's training time up to the batch
   that holds its first hit; DCT learns all its factors at once, so its whole time), and, for the
   vector methods, the largest cosine between a vector and the planted concept's direction.
   `--melbo-only` leaves them out (the MELBO and random figures alone).
`--spec source=10 --spec positions=last:1` runs MELBO and its twin with other settings (any
MelboSpec field, as in bench/yield.py): a candidate default must keep the organism's hits.
`--seed 1` trains other vectors, twins, factors and adapters (how far a hit count moves with the
seed alone).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.* importable
from bench.common import ci95_per_100, first_hit_seconds, log, per_100, spec_option
from bench.common import greedy as steered_greedy
from bench.organism import Recipe, build, eval_prompts, fingerprint, shows_planted, supervised_vector
from bench.organism_prompts import RUN_PROMPTS
from bench.verdict import Target, report
from engine.decode.generate import GenerationRequest, generate
from engine.discovery.embedder import Embedder
from engine.discovery.findings import Completion, find
from engine.methods.adapter_trainer import train_adapters
from engine.methods.adapters import Adapter
from engine.methods.dct import train_dct
from engine.methods.melbo import train_melbo
from engine.models import LoadedModel, load_model
from engine.specs import AdapterSpec, DctSpec, MelboSpec

TOKENS = 48
TRAIN_PROMPTS = RUN_PROMPTS[:4]  # MELBO trains on these; the gallery adds the other four


# Hits of the planted reply per 100 default MELBO vectors, on a fair organism (no regression).
TARGETS = (Target("hits_melbo_per_100", ">=", 9), Target("fair", "==", True))


def greedy(lm: LoadedModel, prompts: list[str], block: int | None = None, vectors: Any = None) -> list[str]:
    return steered_greedy(lm, prompts, block, vectors, tokens=TOKENS)


def adapted(lm: LoadedModel, prompts: list[str], adapters: list[Adapter]) -> list[str]:
    requests = [
        GenerationRequest(prompt=p, adapter=a, max_new_tokens=TOKENS) for a in adapters for p in prompts
    ]
    return [r.text for r in generate(lm, requests, batch_size=32)]


def planted_cosine(folder: Path, vectors: torch.Tensor) -> float | None:
    """Largest cosine between a vector and the direction the organism was taught (None for an
    organism built without one)."""
    saved = folder / "planted_direction.pt"
    if not saved.is_file():
        return None
    direction = torch.load(saved)["direction"].float()
    return round(float(torch.nn.functional.cosine_similarity(vectors.float(), direction[None]).max()), 3)


def method_rows(
    lm: LoadedModel,
    folder: Path,
    n: int,
    learned: Any,
    learned_hits: list[bool],
    *,
    seed: int = 0,
    others: bool = True,
) -> dict[str, Any]:
    """Hits per 100 and time to the first hit for MELBO (already trained), DCT and adapters."""
    spec_batch = MelboSpec(prompts=TRAIN_PROMPTS).batch_size
    rows: dict[str, Any] = {
        "melbo": {
            "hits_per_100": per_100(learned_hits),
            "hits_ci95": ci95_per_100(learned_hits),
            "first_hit_s": first_hit_seconds(learned_hits, learned.seconds, spec_batch),
            "train_s": round(learned.seconds, 1),
            "radius": round(learned.radius, 3),
            "planted_cosine_max": planted_cosine(folder, learned.vectors),
        }
    }
    if not others:
        return rows
    log(f"DCT: {n} factors (product defaults)")
    dct = train_dct(lm, DctSpec(prompts=TRAIN_PROMPTS, n_vectors=n, seed=seed))
    dct_hits = hits(greedy(lm, list(RUN_PROMPTS), dct.source, dct.vectors), n)
    rows["dct"] = {
        "hits_per_100": per_100(dct_hits),
        "hits_ci95": ci95_per_100(dct_hits),
        "first_hit_s": round(dct.seconds, 1) if any(dct_hits) else None,
        "train_s": round(dct.seconds, 1),
        "radius": round(dct.radius, 3),
        "planted_cosine_max": planted_cosine(folder, dct.vectors),
    }
    log(f"DCT: {sum(dct_hits)} hits, R = {dct.radius:.2f}, {dct.seconds:.0f} s")
    log(f"adapters: {n} (product defaults)")
    adapter_spec = AdapterSpec(prompts=TRAIN_PROMPTS, n_vectors=n, seed=seed)
    trained = train_adapters(lm, adapter_spec)
    adapter_hits = hits(adapted(lm, list(RUN_PROMPTS), trained.adapters), n)
    rows["adapters"] = {
        "hits_per_100": per_100(adapter_hits),
        "hits_ci95": ci95_per_100(adapter_hits),
        "first_hit_s": first_hit_seconds(adapter_hits, trained.seconds, adapter_spec.batch_size),
        "train_s": round(trained.seconds, 1),
        "radius": round(trained.radius, 3),
        "rank": adapter_spec.rank,
    }
    log(f"adapters: {sum(adapter_hits)} hits, {trained.seconds:.0f} s")
    return rows


def rate(texts: list[str]) -> float:
    return sum(shows_planted(t) for t in texts) / max(1, len(texts))


def hits(texts: list[str], n_vectors: int) -> list[bool]:
    """Per vector (rows vector-major over the run's prompts): planted on at least half its prompts."""
    per = len(texts) // max(1, n_vectors)
    return [
        sum(shows_planted(t) for t in texts[i * per : (i + 1) * per]) * 2 >= per for i in range(n_vectors)
    ]


def longest_unit(lm: LoadedModel, embedder: Embedder, items: list[Completion]) -> float:
    """Seconds of the longest piece of scoring a worker cannot interrupt (one fluency batch): the
    longest a chat reply waits behind scoring in a compute loop that interleaves them."""
    marks = [time.perf_counter()]
    find(lm, embedder, items[:64], on_batch=lambda done, total: marks.append(time.perf_counter()))
    return max(b - a for a, b in itertools.pairwise(marks)) if len(marks) > 1 else 0.0


def fairness_only(
    lm: LoadedModel,
    organism: str,
    n: int,
    clean_rate: float,
    triggered_rate: float,
    near_rate: float,
    steps: int,
    seed: int,
    settings: dict[str, Any],
    began: float,
    load_start: float,
) -> None:
    """The organism's fairness figures alone: no MELBO run, no scoring."""
    twin = train_melbo(
        lm, MelboSpec(prompts=TRAIN_PROMPTS, n_vectors=n, seed=seed, method="random", **settings)
    )
    theta = supervised_vector(lm, TRAIN_PROMPTS, twin.source, twin.radius, steps, log=log)
    reach = rate(greedy(lm, list(RUN_PROMPTS[4:]), twin.source, theta[None]))
    log(f"supervised_reach {reach:.2f}")
    random_hits = hits(greedy(lm, list(RUN_PROMPTS), twin.source, twin.vectors), n)
    result = {
        "bench": "discovery",
        "fairness_only": True,
        "organism": organism,
        "random_vectors": n,
        "spec": settings,
        "seed": seed,
        "radius": round(twin.radius, 4),
        "clean_rate": clean_rate,
        "triggered_rate": triggered_rate,
        "near_miss_rate": near_rate,
        "supervised_reach": reach,
        "random_rate": sum(random_hits) / n,
        "load_start": round(load_start, 1),
        "load_end": round(os.getloadavg()[0], 1),
        "seconds": round(time.perf_counter() - began),
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="32 vectors instead of 128")
    parser.add_argument("--vectors", type=int, help="MELBO vectors (and as many random ones)")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--supervised-steps", type=int, default=30)
    parser.add_argument("--melbo-only", action="store_true", help="leave out DCT and adapters")
    parser.add_argument(
        "--fairness-only",
        action="store_true",
        help="only the organism's checks (clean, triggered, near-miss, supervised reach, random rate)",
    )
    parser.add_argument(
        "--no-target-timing",
        action="store_true",
        help="skip timing the 256 x 8 x 48 workload (--quick skips it too)",
    )
    parser.add_argument(
        "--spec",
        action="append",
        metavar="KEY=VALUE",
        help="another MELBO setting for learned and twin (repeatable): source=10, positions=last:1",
    )
    parser.add_argument("--seed", type=int, default=0, help="other vectors, twins, factors and adapters")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.vectors or (32 if args.quick else 128)
    settings = spec_option(args.spec)
    load_start = os.getloadavg()[0]
    began = time.perf_counter()

    log("building or loading the organism")
    folder = build(Recipe(), log=log)
    organism = fingerprint(folder)
    log(f"organism {folder.name}, weights {organism}")
    lm = load_model(str(folder), device="cpu")
    evals = eval_prompts()

    log("fairness: the organism unsteered on held-out prompts")
    clean_texts = greedy(lm, evals["clean"])
    triggered_texts = greedy(lm, evals["triggered"])
    near_texts = greedy(lm, evals["near"])
    clean_rate, triggered_rate, near_rate = rate(clean_texts), rate(triggered_texts), rate(near_texts)
    log(f"clean {clean_rate:.2f}, triggered {triggered_rate:.2f}, near misses {near_rate:.2f}")

    if args.fairness_only:
        fairness_only(
            lm,
            organism,
            n,
            clean_rate,
            triggered_rate,
            near_rate,
            args.supervised_steps,
            args.seed,
            settings,
            began,
            load_start,
        )
        return

    log(f"training {n} MELBO vectors and the random twin ({settings or 'product defaults'})")
    learned = train_melbo(lm, MelboSpec(prompts=TRAIN_PROMPTS, n_vectors=n, seed=args.seed, **settings))
    twin = train_melbo(
        lm, MelboSpec(prompts=TRAIN_PROMPTS, n_vectors=n, seed=args.seed, method="random", **settings)
    )
    assert abs(twin.radius - learned.radius) < 1e-6, "the twin must share R"
    radius, block = learned.radius, learned.source
    log(f"R = {radius:.3f} at block {block}")

    log("supervised reach")
    theta = supervised_vector(lm, TRAIN_PROMPTS, block, radius, args.supervised_steps, log=log)
    held_out = list(RUN_PROMPTS[4:]) + evals["clean"][:12]
    reach_texts = greedy(lm, held_out, block, theta[None])
    supervised_reach = rate(reach_texts)
    log(f"supervised_reach {supervised_reach:.2f}")

    log("gallery: learned and random vectors on the run's 8 prompts")
    unsteered = dict(zip(RUN_PROMPTS, greedy(lm, list(RUN_PROMPTS)), strict=True))
    learned_texts = greedy(lm, list(RUN_PROMPTS), block, learned.vectors)
    random_texts = greedy(lm, list(RUN_PROMPTS), block, twin.vectors)
    learned_hits, random_hits = hits(learned_texts, n), hits(random_texts, n)

    items = []
    for kind, texts in (("l", learned_texts), ("r", random_texts)):
        for i, text in enumerate(texts):
            prompt = RUN_PROMPTS[i % len(RUN_PROMPTS)]
            items.append(
                Completion(f"{kind}{i // len(RUN_PROMPTS)}", prompt, text, unsteered[prompt], kind == "r")
            )
    embedder = Embedder()
    log(f"scoring and clustering {len(items)} completions")
    t0 = time.perf_counter()
    found = find(lm, embedder, items)
    score_seconds = time.perf_counter() - t0
    # The target workload is 256 vectors x 8 prompts x 48 tokens: time exactly that many rows.
    target_rows = 256 * len(RUN_PROMPTS)
    if args.quick or args.no_target_timing:
        target_seconds = None
    elif len(items) != target_rows:
        tiled = [
            Completion(f"{c.vector}-{k}", c.prompt, c.text, c.unsteered, c.random)
            for k in range(target_rows // len(items) + 1)
            for c in items
        ][:target_rows]
        log(f"timing the 256 x 8 workload ({len(tiled)} completions, this run's texts repeated)")
        t0 = time.perf_counter()
        find(lm, embedder, tiled)
        target_seconds = time.perf_counter() - t0
    else:
        target_seconds = score_seconds
    unit = longest_unit(lm, embedder, items)

    order = found.order  # learned vector keys, interesting first
    hit_keys = {f"l{i}" for i, h in enumerate(learned_hits) if h}
    first = next((k for k, v in enumerate(order) if v in hit_keys), None)
    planted = [
        i for i, c in enumerate(items) if not c.random and c.vector in hit_keys and shows_planted(c.text)
    ]
    groups = Counter(found.behaviour_of[i] for i in planted)
    purity = groups.most_common(1)[0][1] / len(planted) if planted else None
    planted_name = next(
        (b.name for b in found.behaviours if groups and b.index == groups.most_common(1)[0][0]), ""
    )
    for b in found.behaviours[:12]:
        log(
            f"behaviour {b.name!r}: {b.size} completions, "
            f"{len(b.vectors)} vectors, {len(b.random_vectors)} random"
        )

    methods = method_rows(lm, folder, n, learned, learned_hits, seed=args.seed, others=not args.melbo_only)
    methods["random"] = {
        "hits_per_100": per_100(random_hits),
        "hits_ci95": ci95_per_100(random_hits),
        "first_hit_s": first_hit_seconds(
            random_hits, twin.seconds, MelboSpec(prompts=TRAIN_PROMPTS).batch_size
        ),
        "train_s": round(twin.seconds, 1),
        "radius": round(twin.radius, 3),
        "planted_cosine_max": planted_cosine(folder, twin.vectors),
    }
    fair = clean_rate == 0 and supervised_reach >= 0.5 and sum(random_hits) / n <= 0.02
    result = {
        "bench": "discovery",
        "organism": organism,
        "vectors": n,
        "spec": settings,
        "seed": args.seed,
        "radius": round(radius, 4),
        "fair": fair,
        "clean_rate": clean_rate,
        "triggered_rate": triggered_rate,
        "near_miss_rate": near_rate,
        "supervised_reach": supervised_reach,
        "random_rate": sum(random_hits) / n,
        "hits_melbo_per_100": per_100(learned_hits),
        "hits_melbo_ci95": ci95_per_100(learned_hits),
        "hits_random_per_100": per_100(random_hits),
        "hits_random_ci95": ci95_per_100(random_hits),
        "radius_relative": round(radius / learned.residual_norm, 4),
        "radius_calibration": learned.calibration,
        "first_hit_percentile": None if first is None else round(100 * first / n, 1),
        "planted_purity": purity,
        "planted_behaviour": planted_name,
        "methods": methods,
        "behaviours": sum(b.kind == "cluster" for b in found.behaviours),
        "discovery_curve_end": {k: v[-1] if v else 0 for k, v in found.curve.items()},
        "score_cluster_seconds": round(score_seconds, 1),
        "score_cluster_seconds_256x8x48": None if target_seconds is None else round(target_seconds, 1),
        "score_seconds_per_1000_completions": round(1000 * score_seconds / len(items), 1),
        "longest_scoring_unit_s": round(unit, 2),
        "threads": torch.get_num_threads(),
        "load_start": round(load_start, 1),
        "load_end": round(os.getloadavg()[0], 1),
        "seconds": round(time.perf_counter() - began),
    }
    report("discovery", result, TARGETS)


if __name__ == "__main__":
    main()
