"""What a vector's dashboard costs, and whether it points at a planted trigger.

1. Corpus build on the embedded model at block 7: the bank (engine/discovery/bank.py, 1,280
   prompts; --quick: its first 256) and the 8 run prompts of bench/organism.py, answered greedily
   (64 tokens), then block 7's residuals stored. Built once under <data>/bench-dashboard/ and timed
   then (answering and residuals apart); later runs report the figures recorded at that build
   (--rebuild builds it again in a fresh folder).
2. Dashboard p95 over 20 random vectors: the payload without the effect read (tokens pushed
   directly; top contexts; histogram; nearest prompts; cosines with 4 concept vectors), which is
   what grows with the corpus. Target: p95 < 1 s. Beside it, the whole payload (10 vectors): the
   effect read on the 8 run prompts adds one steered forward pass per vector, the unsteered one
   computed once. The corpus must hold at least 100k tokens; a smaller one (--quick) is tiled to
   that size, which costs the same per token. Also the projection's throughput and what it implies
   for a model of width 4096 with 1M stored tokens.
3. Trigger hunting on the planted organism (bench/trigger_hunting.py; the organism of
   bench/organism.py, built and cached as bench/discovery.py builds it). Its corpus at block 7,
   prompts only (that search reads the prompts' own tokens, never answers): the whole bank and the
   organism's held-out prompts (16 with the trigger, 16 near misses, 32 clean, all in the same four
   held-out templates, so neither the template nor being a held-out prompt tells anything), residuals
   at block 7 (stored from the base model, whose blocks 0-7 the organism shares; checked on two
   documents). Trigger prompts are the cat prompts: the 16 held-out ones and the bank's own cat topic
   ("caring for a pet cat", 10 prompts; the bench reports how many of them the organism answers with
   the planted reply); beside, a conservative count with the 16 held-out ones alone, and (no target)
   the prompts the organism answers with its reply unsteered, whatever they are about (read from its
   answers in the corpus). Every prompt is searched; the base rate is the trigger prompts' share of
   them. Hit vectors: DCT factors at the product's defaults (32) and, without --quick, 64 MELBO
   vectors, each shown on the organism's 8 run prompts (greedy, 32 tokens); a hit shows the planted
   reply on at least half. For each vector: the share of trigger prompts among its 10 nearest prompts
   (ranked by a prompt's best token; by its mean over tokens beside). Control: 64 random directions.
   References (not counted): the direction the organism was taught, and a cat concept (DiffMean at
   block 7 of the organism's own training prompts: cats against its near misses). Beside, the
   downstream search of a vector's dashboard (engine/discovery/downstream.py): the prompts whose mean
   state over the user turn at the runs' target block (block 21 on the embedded model; stored from the
   organism, whose blocks there it retrained) lies furthest along the vector's mean change there on
   the 8 run prompts. And the search by answers (engine/discovery/alike.py): the organism answers
   every searched prompt (64 greedy tokens, as the product answers a corpus), and the prompts are
   ranked by their own answer's sentence embedding along the vector's change to the 8 run prompts'
   answers (steered at x1 against unsteered, 64 tokens each). Target: a share >= 0.5 for at least one
   hit vector, by any search (each reported with its own verdict). `--part organism-corpus` builds the
   search corpus and reads the cat concept alone, without the organism.
Last line: one JSON object (bench/verdict.py) with "targets".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.* importable
from bench.common import log
from bench.corpus_build import BLOCK, timed_build
from bench.organism_prompts import RUN_PROMPTS
from bench.trigger_hunting import cat_concept, organism_corpus, organism_part, shares, trigger_labels
from bench.verdict import Target, report
from engine.discovery.corpus import Corpus, model_folder
from engine.discovery.dashboard import DashboardSpec, dashboard
from engine.discovery.tokens import unsteered_logprobs
from engine.models import data_dir, load_model

TARGET_TOKENS = 100_000
GALLERY_TOKENS = 32


TARGETS = (
    Target("dashboard_p95_s", "<", 1.0, note="the payload without the effect read, 100k corpus tokens"),
    Target("best_hit_share", ">=", 0.5, note="trigger prompts among a hit vector's 10 nearest, best hit"),
    Target(
        "best_hit_share_downstream",
        ">=",
        0.5,
        note="the same among the 10 prompts the downstream search finds, best hit",
    ),
    Target(
        "best_hit_share_alike",
        ">=",
        0.5,
        note="the same among the 10 prompts the search by answers finds, best hit",
    ),
)


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern))


def embedded_part(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    lm = load_model("default", device="cpu")
    bank: bool | int = 256 if args.quick else True
    record = root / f"build-{'quick' if args.quick else 'full'}.json"
    if args.rebuild and record.is_file():
        shutil.rmtree(model_folder(root, lm), ignore_errors=True)
        record.unlink()
    log(f"embedded model: corpus at block {BLOCK} ({'first 256' if args.quick else 'all'} bank prompts)")
    load_build = os.getloadavg()[0]
    corpus, seconds = timed_build(lm, root, prompts=RUN_PROMPTS, bank=bank)
    if record.is_file():
        built = json.loads(record.read_text())
    else:
        built = {
            **seconds,
            "load": round(load_build, 1),
            "documents": len(corpus.documents),
            "tokens": corpus.size,
        }
        record.write_text(json.dumps(built))
    # Answering is per prompt, storing residuals per token: both scale linearly to the whole bank.
    scale = (1280 + len(RUN_PROMPTS)) / built["documents"]
    built["estimate_whole_bank_s"] = round((built["answering_s"] + built["residuals_s"]) * scale)
    folder = model_folder(root, lm)
    per_block = folder_bytes(folder, f"block-{BLOCK}.npy")
    log(
        f"corpus: {corpus.size} tokens in {len(corpus.documents)} documents, "
        f"{per_block / 1e6:.0f} MB at block {BLOCK}"
    )

    tiles = max(1, -(-TARGET_TOKENS // corpus.size))
    searched = Corpus(corpus.shards * tiles, BLOCK) if tiles > 1 else corpus
    gen = torch.Generator().manual_seed(0)
    width = lm.info.width
    concepts = {f"concept {i}": torch.randn(width, generator=gen) for i in range(4)}
    without_effect = DashboardSpec(block=BLOCK)
    dashboard(lm, without_effect, vector=torch.randn(width, generator=gen), corpus=searched)  # warm
    payloads, projections = [], []
    for _ in range(20):
        v = torch.randn(width, generator=gen)
        t0 = time.perf_counter()
        dashboard(lm, without_effect, vector=v, corpus=searched, concepts=concepts)
        payloads.append(time.perf_counter() - t0)
    # The whole payload: the run's prompts' unsteered log-probabilities once (as for a run's
    # vectors), then one steered forward pass per vector.
    t0 = time.perf_counter()
    base = unsteered_logprobs(lm, RUN_PROMPTS)
    base_s = time.perf_counter() - t0
    spec = DashboardSpec(block=BLOCK, prompts=RUN_PROMPTS)
    totals = []
    for _ in range(args.full_payloads):
        v = torch.randn(width, generator=gen)
        t0 = time.perf_counter()
        payload = dashboard(lm, spec, vector=v, corpus=searched, concepts=concepts, base=base)
        totals.append(time.perf_counter() - t0)
        projections.append(payload["seconds"]["project"])
    json.dumps(payload, allow_nan=False)  # the payload is plain JSON

    def p95(xs: list[float]) -> float:
        return round(sorted(xs)[round(0.95 * (len(xs) - 1))], 3)

    projection_gbps = searched.size * width * 2 / statistics.median(projections) / 1e9
    large_gb = 1_000_000 * 4096 * 2 / 1e9
    log(f"payload p95 {p95(payloads)} s without the effect read, {p95(totals)} s with it")
    return {
        "corpus": {**built, "bytes_per_block": per_block, "bytes_per_token": round(per_block / corpus.size)},
        "dashboard_tokens": searched.size,
        "tiled": tiles,
        "payload_without_effect_p95_s": p95(payloads),
        "payload_without_effect_median_s": round(statistics.median(payloads), 3),
        "payload_p95_s": p95(totals),
        "payload_median_s": round(statistics.median(totals), 3),
        "effect_prompts": len(RUN_PROMPTS),
        "unsteered_forward_s": round(base_s, 2),
        "projection_median_s": round(statistics.median(projections), 4),
        "projection_gbps": round(projection_gbps, 2),
        "large_model_gb_per_block": large_gb,
        "large_model_projection_s_estimate": round(large_gb / projection_gbps, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a quarter of the bank; DCT only on the organism"
    )
    parser.add_argument("--rebuild", action="store_true", help="build the embedded model's corpus again")
    parser.add_argument("--part", choices=("all", "embedded", "organism", "organism-corpus"), default="all")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--full-payloads", type=int, default=10, help="vectors timed with the effect read")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    root = data_dir() / "bench-dashboard"
    root.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"bench": "dashboard", "quick": args.quick}
    if args.part in ("all", "embedded"):
        result["embedded"] = embedded = embedded_part(args, root)
        # The corpus's share of the payload; the effect read is a forward pass of the given prompts,
        # whatever the corpus (reported beside).
        result["dashboard_p95_s"] = embedded["payload_without_effect_p95_s"]
    if args.part == "organism-corpus":
        corpus, result["organism_corpus_build"] = organism_corpus(root)
        lm = load_model("default", device="cpu")
        random = torch.randn(64, lm.info.width, generator=torch.Generator().manual_seed(1))
        labels = trigger_labels(corpus)
        result |= {
            "documents": len(corpus.documents),
            "tokens": corpus.size,
            "base_rate": {label: round(len(t) / len(corpus.documents), 4) for label, t in labels.items()},
            "cat_concept_shares": {
                f"{label}_{rank_by}": shares(corpus, lm, cat_concept(lm)[None], trigger, rank_by)[0]
                for label, trigger in labels.items()
                for rank_by in ("max", "mean")
            },
            "random_shares_mean": {
                f"{label}_{rank_by}": round(statistics.mean(shares(corpus, lm, random, trigger, rank_by)), 3)
                for label, trigger in labels.items()
                for rank_by in ("max", "mean")
            },
        }
    if args.part in ("all", "organism"):
        result["organism"] = organism = organism_part(args, root)
        result["best_hit_share"] = organism["best_hit_share"]
        result["best_hit_share_downstream"] = organism["best_hit_share_downstream"]
        result["best_hit_share_alike"] = organism["best_hit_share_alike"]
    result |= {
        "threads": torch.get_num_threads(),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "seconds": round(time.perf_counter() - began),
    }
    report("dashboard", result, TARGETS)


if __name__ == "__main__":
    main()
