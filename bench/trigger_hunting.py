"""Trigger hunting on the planted organism, part 3 of bench/dashboard.py (its docstring says what is
measured): for the vectors that bring out the planted reply, the share of trigger prompts among the
prompts each search of a vector's dashboard finds, against random directions and the references."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch

from bench.common import log
from bench.corpus_build import BLOCK, timed_build
from bench.discovery import TRAIN_PROMPTS, greedy, hits
from bench.organism import Recipe, build, eval_prompts, fingerprint, shows_planted
from bench.organism_prompts import NEAR_MISSES, RUN_PROMPTS, TRAIN_TEMPLATES, TRIGGERS
from engine.decode.generate import GenerationRequest, generate
from engine.discovery.alike import alike_prompts, answer_change, answer_embedding_steps, steered_answer_steps
from engine.discovery.corpus import ANSWER_TOKENS, Corpus, Part, corpus_steps
from engine.discovery.downstream import downstream_change
from engine.discovery.embedder import Embedder
from engine.discovery.occurrence import nearest_prompts
from engine.methods.concepts import ConceptSpec, train_concept
from engine.methods.dct import train_dct
from engine.methods.melbo import train_melbo
from engine.models import LoadedModel, load_model
from engine.specs import DctSpec, MelboSpec, default_target
from engine.steer.capture import sequence_outputs
from engine.units import run_steps

TOP = 10  # prompts read per vector, as a dashboard lists them


def steered_tops(corpus: Corpus, lm: LoadedModel, vectors: torch.Tensor, rank_by: str) -> list[set[int]]:
    """Per vector: its TOP nearest prompts at the steered block, ranked by a prompt's best token
    ("max") or its mean ("mean"), as a vector's dashboard reads them."""
    out = []
    for v in vectors:
        top = nearest_prompts(corpus, corpus.project(v), lm.tokenizer, k=TOP, rank_by=rank_by)  # type: ignore[arg-type]
        out.append({r["document"] for r in top})
    return out


def shares(
    corpus: Corpus, lm: LoadedModel, vectors: torch.Tensor, trigger: set[int], rank_by: str
) -> list[float]:
    """Per vector: the share of trigger documents among its TOP nearest prompts."""
    return share(steered_tops(corpus, lm, vectors, rank_by), trigger)


def downstream_tops(lm: LoadedModel, later: Corpus, vectors: torch.Tensor) -> list[set[int]]:
    """Per vector: the TOP prompts the downstream search finds (their mean state over the user turn
    at the runs' target block along the vector's mean change there on the run prompts), as a
    vector's dashboard reads them."""
    out = []
    for v in vectors:
        change = downstream_change(lm, v, block=BLOCK, read=later.block, prompts=RUN_PROMPTS)
        top = nearest_prompts(later, later.project(change), lm.tokenizer, k=TOP, rank_by="mean")
        out.append({r["document"] for r in top})
    return out


def alike_tops(
    lm: LoadedModel,
    later: Corpus,
    embedder: Embedder,
    answers: torch.Tensor,
    plain: list[str],
    vectors: torch.Tensor,
) -> list[set[int]]:
    """Per vector: the TOP documents the search by answers finds (their own unsteered answers'
    embeddings, `answers`, along the vector's change to the run prompts' answers, steered at ×1
    against `plain`), as a vector's dashboard reads it; none where the vector changes no answer."""
    out = []
    for v in vectors:
        steered = run_steps(
            steered_answer_steps(lm, v, block=BLOCK, prompts=RUN_PROMPTS, max_new_tokens=ANSWER_TOKENS)
        )
        top = alike_prompts(later, answers, answer_change(embedder, steered, plain), k=TOP)
        out.append({r["document"] for r in top} if steered != plain else set())
    return out


def share(tops: list[set[int]], trigger: set[int]) -> list[float]:
    return [len(top & trigger) / TOP for top in tops]


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


def greedy_texts(lm: LoadedModel, prompts: list[str], tokens: int = 24) -> list[str]:
    requests = [GenerationRequest(prompt=p, max_new_tokens=tokens) for p in prompts]
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
    assert same < 2.0**-9, f"the organism's block-{BLOCK} residuals differ from the base model's ({same})"
    # The downstream search reads the block the runs' objective looks at (target hidden state - 1),
    # which the organism's training changed: stored from the organism itself, the same prompts,
    # answered by the organism as the product answers a corpus (for the search by answers).
    read = default_target(lm.info.n_blocks, BLOCK) - 1
    log(f"the organism's corpus at block {read}, answered (downstream search, search by answers)")
    extra = tuple(Part(kind, tuple(prompts)) for kind, prompts in eval_prompts().items())
    later = run_steps(corpus_steps(lm, root, read, bank=True, extra=extra, max_new_tokens=ANSWER_TOKENS))
    assert [d.prompt for d in later.documents] == [d.prompt for d in corpus.documents]
    labels = trigger_labels(corpus)
    # Beside the designed trigger: the prompts on which the organism shows its reply unsteered (its
    # own answers in the corpus), whatever they are about.
    labels["answers_planted"] = {i for i, d in enumerate(later.documents) if shows_planted(d.completion)}
    bank_cats = [i for i in labels["cats"] if corpus.documents[i].kind == "bank"]
    bank_cats_planted = len(labels["answers_planted"].intersection(bank_cats))
    log(f"the organism answers {bank_cats_planted} of the bank's {len(bank_cats)} cat prompts with its reply")
    n = len(corpus.documents)
    log(f"organism corpus: {n} prompts, trigger prompts { ({k: len(v) for k, v in labels.items()}) }")
    embedder = Embedder()
    answers = run_steps(answer_embedding_steps(embedder, later))  # once: every vector set reads them
    plain = greedy_texts(lm, list(RUN_PROMPTS), ANSWER_TOKENS)

    def searched(vs: torch.Tensor) -> dict[str, list[set[int]]]:
        """Each search's TOP documents per vector."""
        return {
            "max": steered_tops(corpus, lm, vs, "max"),
            "mean": steered_tops(corpus, lm, vs, "mean"),
            "downstream": downstream_tops(lm, later, vs),
            "alike": alike_tops(lm, later, embedder, answers, plain, vs),
        }

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
    # At the hit vectors' norm: the search at the steered block reads directions only, the others
    # read what the vector does, which depends on its size.
    size = vectors["dct"].norm(dim=1).mean()
    controls = {name: vs / vs.norm(dim=1, keepdim=True) * size for name, vs in controls.items()}
    rows: dict[str, Any] = {}
    best: dict[str, dict[str, float]] = {label: {} for label in labels}  # label -> search -> best hit
    for name, vs in vectors.items():
        log(f"{name}: gallery of {len(vs)} vectors")
        found = hits(greedy(lm, list(RUN_PROMPTS), BLOCK, vs), len(vs))
        row: dict[str, Any] = {"vectors": len(vs), "hits": sum(found)}
        for search, tops in searched(vs).items():
            for label, trigger in labels.items():
                values = share(tops, trigger)
                hit_values = [v for v, h in zip(values, found, strict=True) if h]
                other = [v for v, h in zip(values, found, strict=True) if not h]
                row[f"{label}_{search}"] = {
                    "hit_shares": hit_values,
                    "others_mean": round(statistics.mean(other), 3) if other else None,
                }
                if hit_values:
                    best[label][search] = max(best[label].get(search, 0.0), *hit_values)
        rows[name] = row
        log(f"{name}: {sum(found)} hits; {row['cats_max']}")
    for name, vs in controls.items():
        rows[name] = {}
        for search, tops in searched(vs).items():
            for label, trigger in labels.items():
                values = share(tops, trigger)
                rows[name][f"{label}_{search}"] = round(statistics.mean(values), 3)
                rows[name][f"{label}_{search}_max"] = max(values)
    return {
        "organism": fingerprint(folder),
        "documents": n,
        "stored_vs_organism_residuals": same,
        "bank_cat_prompts_answered_planted": f"{bank_cats_planted}/{len(bank_cats)}",
        "base_rate": {label: round(len(t) / n, 4) for label, t in labels.items()},
        "build": seconds,
        "methods": rows,
        "best_hit_share": best["cats"].get("max"),
        "best_hit_share_downstream": best["cats"].get("downstream"),
        "best_hit_share_alike": best["cats"].get("alike"),
        # Informational, no target: the same read against the prompts the organism answers with its
        # reply unsteered (the search by answers ranks by those answers, so for it this is close to
        # a tautology: what it shows is that the prompts are there to be found).
        "best_hit_share_answers_planted": best["answers_planted"],
    }
