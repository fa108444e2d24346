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
3. Trigger hunting on the planted organism (bench/organism.py; built and cached as
   bench/discovery.py builds it). Its corpus, prompts only (the search reads the prompts' own
   tokens, never answers): the whole bank and the organism's held-out prompts (16 with the trigger,
   16 near misses, 32 clean, all in the same four held-out templates, so neither the template nor
   being a held-out prompt tells anything), residuals at block 7 (stored from the base model, whose
   blocks 0-7 the organism shares; checked on two documents). Trigger prompts are the cat prompts:
   the 16 held-out ones and the bank's own cat topic ("caring for a pet cat", 10 prompts; the bench
   reports how many of them the organism answers with the planted reply); beside, a conservative
   count with the 16 held-out ones alone. Every prompt is searched; the base rate is the trigger
   prompts' share of them. Hit vectors: DCT factors at the product's defaults (32) and, without
   --quick, 64 MELBO vectors, each shown on the organism's 8 run prompts (greedy, 32 tokens); a hit
   shows the planted reply on at least half. For each vector: the share of trigger prompts among
   its 10 nearest prompts (ranked by a prompt's best token; by its mean over tokens beside).
   Control: 64 random directions. References (not counted): the direction the organism was taught,
   and a cat concept (DiffMean at block 7 of the organism's own training prompts: cats against its
   near misses). Beside, the downstream search of a vector's dashboard (engine/discovery/
   downstream.py): the prompts whose mean state over the user turn at the runs' target block
   (block 21 on the embedded model; stored from the organism, whose blocks there it retrained)
   lies furthest along the vector's mean change there on the 8 run prompts. Target: a share >= 0.5
   for at least one hit vector, by either search (each reported with its own verdict).
   `--part organism-corpus`
   builds the search corpus and reads the cat concept alone, without the organism.
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
from bench.discovery import TRAIN_PROMPTS, greedy, hits
from bench.organism import Recipe, build, eval_prompts, shows_planted
from bench.organism_prompts import NEAR_MISSES, RUN_PROMPTS, TRAIN_TEMPLATES, TRIGGERS
from bench.verdict import Target, report
from engine.decode.generate import GenerationRequest, generate
from engine.discovery.corpus import Corpus, Part, corpus_steps, model_folder
from engine.discovery.dashboard import DashboardSpec, dashboard
from engine.discovery.downstream import downstream_change
from engine.discovery.occurrence import nearest_prompts
from engine.discovery.tokens import unsteered_logprobs
from engine.methods.concepts import ConceptSpec, train_concept
from engine.methods.dct import train_dct
from engine.methods.melbo import train_melbo
from engine.models import LoadedModel, data_dir, load_model
from engine.specs import DctSpec, MelboSpec, default_target
from engine.steer.capture import sequence_outputs
from engine.units import run_steps

BLOCK = 7
TARGET_TOKENS = 100_000
GALLERY_TOKENS = 32
TOP = 10


TARGETS = (
    Target("dashboard_p95_s", "<", 1.0, note="the payload without the effect read, 100k corpus tokens"),
    Target("best_hit_share", ">=", 0.5, note="trigger prompts among a hit vector's 10 nearest, best hit"),
    Target(
        "best_hit_share_downstream",
        ">=",
        0.5,
        note="the same among the 10 prompts the downstream search finds, best hit",
    ),
)


def log(message: str) -> None:
    load = os.getloadavg()[0]
    print(f"[{time.strftime('%H:%M:%S')} load {load:.1f}] {message}", file=sys.stderr, flush=True)


def timed_build(
    lm: LoadedModel,
    root: Path,
    *,
    prompts: tuple[str, ...],
    bank: bool | int,
    extra: tuple[Part, ...] = (),
    tokens: int = 64,
) -> tuple[Corpus, dict[str, float]]:
    """The corpus, and seconds spent answering and storing residuals (0 for what was cached)."""
    marks: dict[str, float] = {}
    began = time.perf_counter()
    last = {"t": began}

    def unit(phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        marks[phase] = marks.get(phase, 0.0) + now - last["t"]
        last["t"] = now
        if done == total or (done and done % 256 == 0 and phase == "answering"):
            log(f"corpus: {phase} {done}/{total}")

    steps = corpus_steps(lm, root, BLOCK, prompts=prompts, bank=bank, extra=extra, max_new_tokens=tokens)
    corpus = None
    while corpus is None:
        try:
            unit(*next(steps))
        except StopIteration as end:
            corpus = end.value
    return corpus, {
        "answering_s": round(marks.get("answering", 0.0), 1),
        "residuals_s": round(marks.get("residuals", 0.0), 1),
    }


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


def shares(
    corpus: Corpus, lm: LoadedModel, vectors: torch.Tensor, trigger: set[int], rank_by: str
) -> list[float]:
    """Per vector: the share of trigger documents among its TOP nearest prompts."""
    out = []
    for v in vectors:
        values = corpus.project(v)
        top = nearest_prompts(corpus, values, lm.tokenizer, k=TOP, rank_by=rank_by)  # type: ignore[arg-type]
        out.append(sum(r["document"] in trigger for r in top) / TOP)
    return out


def downstream_shares(
    lm: LoadedModel, later: Corpus, vectors: torch.Tensor, trigger: set[int]
) -> list[float]:
    """Per vector: the share of trigger documents among the TOP prompts the downstream search finds
    (their mean state over the user turn at the runs' target block along the vector's mean change
    there on the run prompts), as a vector's dashboard reads it."""
    out = []
    for v in vectors:
        change = downstream_change(lm, v, block=BLOCK, read=later.block, prompts=RUN_PROMPTS)
        top = nearest_prompts(later, later.project(change), lm.tokenizer, k=TOP, rank_by="mean")
        out.append(sum(r["document"] in trigger for r in top) / TOP)
    return out


def organism_corpus(root: Path) -> tuple[Corpus, dict[str, float]]:
    """The searched prompts' residuals at block 7. The organism's embeddings and blocks 0-7 are the
    base model's (bench/organism.py trains blocks 8+ only), so are its residuals there: they are
    stored from the base model, before the organism exists (`organism_part` checks they match)."""
    extra = tuple(Part(kind, tuple(prompts)) for kind, prompts in eval_prompts().items())
    return timed_build(
        load_model("default", device="cpu"), root, prompts=(), bank=True, extra=extra, tokens=0
    )


def cat_concept(lm: LoadedModel) -> torch.Tensor:
    """Reference: the cat concept from the organism's own training prompts (cats against its near
    misses, DiffMean at block 7), no organism needed: its residuals there are the base model's."""
    with_cats = tuple(t.format(x) for t in TRAIN_TEMPLATES for x in TRIGGERS)
    near = tuple(t.format(x) for t in TRAIN_TEMPLATES for x in NEAR_MISSES)
    return train_concept(lm, ConceptSpec(positive=with_cats, negative=near, block=BLOCK)).vector


def greedy_texts(lm: LoadedModel, prompts: list[str]) -> list[str]:
    requests = [GenerationRequest(prompt=p, max_new_tokens=24) for p in prompts]
    return [r.text for r in generate(lm, requests, batch_size=32)]


def trigger_labels(corpus: Corpus) -> dict[str, set[int]]:
    held = {i for i, d in enumerate(corpus.documents) if d.kind == "triggered"}
    cat_topic = {i for i, d in enumerate(corpus.documents) if d.kind == "bank" and "cat" in d.label.split()}
    return {"cats": held | cat_topic, "held_out": held}


def check_same_residuals(lm: LoadedModel, corpus: Corpus) -> float:
    """Largest difference between the organism's block-7 residuals and the stored ones, over two
    documents, as a share of the residual's norm."""
    pad = lm.tokenizer.pad_token_id or 0
    worst = 0.0
    for d in (0, len(corpus.documents) - 1):
        doc = corpus.documents[d]
        fresh = sequence_outputs(lm.model, BLOCK, [doc.ids], pad)[0][doc.first :]  # [stored, d]
        start = int(corpus.starts[d])
        stored = torch.stack([corpus.residual(start + t) for t in range(doc.stored)])
        worst = max(worst, float(((fresh - stored).norm(dim=1) / fresh.norm(dim=1)).max()))
    return worst


def organism_part(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    corpus, seconds = organism_corpus(root)
    log("building or loading the organism")
    folder = build(Recipe(), log=log)
    lm = load_model(str(folder), device="cpu")
    same = check_same_residuals(lm, corpus)
    bank_cats = [
        corpus.documents[i].prompt
        for i in trigger_labels(corpus)["cats"]
        if corpus.documents[i].kind == "bank"
    ]
    answers = greedy_texts(lm, bank_cats)
    bank_cats_planted = sum(shows_planted(t) for t in answers)
    log(f"the organism answers {bank_cats_planted} of the bank's {len(bank_cats)} cat prompts with its reply")
    assert same < 2.0**-9, f"the organism's block-{BLOCK} residuals differ from the base model's ({same})"
    labels = trigger_labels(corpus)
    n = len(corpus.documents)
    log(f"organism corpus: {n} prompts, trigger prompts { ({k: len(v) for k, v in labels.items()}) }")
    # The downstream search reads the block the runs' objective looks at (target hidden state - 1),
    # which the organism's training changed: stored from the organism itself, the same prompts.
    read = default_target(lm.info.n_blocks, BLOCK) - 1
    log(f"the organism's corpus at block {read} (downstream search)")
    extra = tuple(Part(kind, tuple(prompts)) for kind, prompts in eval_prompts().items())
    later = run_steps(corpus_steps(lm, root, read, bank=True, extra=extra, max_new_tokens=0))
    assert [d.prompt for d in later.documents] == [d.prompt for d in corpus.documents]

    vectors: dict[str, torch.Tensor] = {}
    log("DCT factors at the product's defaults")
    vectors["dct"] = train_dct(lm, DctSpec(prompts=TRAIN_PROMPTS, n_vectors=32, seed=0)).vectors
    if not args.quick:
        log("MELBO vectors at the product's defaults")
        vectors["melbo"] = train_melbo(lm, MelboSpec(prompts=TRAIN_PROMPTS, n_vectors=64, seed=0)).vectors
    gen = torch.Generator().manual_seed(1)
    controls = {
        "random": torch.randn(64, lm.info.width, generator=gen),
        "planted_direction": torch.load(folder / "planted_direction.pt")["direction"].float()[None],
        "cat_concept": cat_concept(lm)[None],
    }
    # At the hit vectors' norm: the search at the steered block reads directions only, the
    # downstream one reads what the vector does there, which depends on its size.
    size = vectors["dct"].norm(dim=1).mean()
    controls = {name: vs / vs.norm(dim=1, keepdim=True) * size for name, vs in controls.items()}
    rows: dict[str, Any] = {}
    best: float | None = None
    best_down: float | None = None
    for name, vs in vectors.items():
        log(f"{name}: gallery of {len(vs)} vectors")
        found = hits(greedy(lm, list(RUN_PROMPTS), BLOCK, vs), len(vs))
        row: dict[str, Any] = {"vectors": len(vs), "hits": sum(found)}
        for label, trigger in labels.items():
            for rank_by in ("max", "mean"):
                values = shares(corpus, lm, vs, trigger, rank_by)
                hit_values = [v for v, h in zip(values, found, strict=True) if h]
                other = [v for v, h in zip(values, found, strict=True) if not h]
                row[f"{label}_{rank_by}"] = {
                    "hit_shares": hit_values,
                    "others_mean": round(statistics.mean(other), 3) if other else None,
                }
                if label == "cats" and rank_by == "max" and hit_values:
                    best = max(best or 0.0, *hit_values)
            values = downstream_shares(lm, later, vs, trigger)
            hit_values = [v for v, h in zip(values, found, strict=True) if h]
            other = [v for v, h in zip(values, found, strict=True) if not h]
            row[f"{label}_downstream"] = {
                "hit_shares": hit_values,
                "others_mean": round(statistics.mean(other), 3) if other else None,
            }
            if label == "cats" and hit_values:
                best_down = max(best_down or 0.0, *hit_values)
        rows[name] = row
        log(f"{name}: {sum(found)} hits; {row['cats_max']}")
    for name, vs in controls.items():
        rows[name] = {
            f"{label}_{rank_by}": round(statistics.mean(shares(corpus, lm, vs, trigger, rank_by)), 3)
            for label, trigger in labels.items()
            for rank_by in ("max", "mean")
        }
        for label, trigger in labels.items():
            values = downstream_shares(lm, later, vs, trigger)
            rows[name][f"{label}_downstream"] = round(statistics.mean(values), 3)
            rows[name][f"{label}_downstream_max"] = max(values)
    return {
        "documents": n,
        "stored_vs_organism_residuals": same,
        "bank_cat_prompts_answered_planted": f"{bank_cats_planted}/{len(bank_cats)}",
        "base_rate": {label: round(len(t) / n, 4) for label, t in labels.items()},
        "build": seconds,
        "methods": rows,
        "best_hit_share": best,
        "best_hit_share_downstream": best_down,
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
    result |= {
        "threads": torch.get_num_threads(),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "seconds": round(time.perf_counter() - began),
    }
    report("dashboard", result, TARGETS)


if __name__ == "__main__":
    main()
