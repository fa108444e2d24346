"""A vector's dashboard: the tokens it pushes, where its direction occurs in text, the prompts that
put the residual stream there, and how it lines up with known concepts — one JSON-able payload.

    corpus = yield from corpus_steps(lm, data, block, prompts=run_prompts)   # built once, then cached
    payload = dashboard(lm, DashboardSpec(block=block, prompts=run_prompts), vector=v, corpus=corpus)

or `dashboard_steps`, which does both as units for a compute loop. Steering adapters get the
tokens they push in effect only (engine/discovery/tokens.py says why).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from engine.discovery.alike import (
    alike_prompts,
    answer_change,
    answer_embedding_steps,
    plain_answers,
    steered_answer_steps,
)
from engine.discovery.corpus import ANSWER_TOKENS, Corpus, CorpusSteps, corpus_steps
from engine.discovery.downstream import downstream_change
from engine.discovery.embedder import EMBEDDER_NAME, Embedder
from engine.discovery.occurrence import histogram, nearest_prompts, top_contexts
from engine.discovery.tokens import direct_read, effect_logprobs, token_rows
from engine.errors import EngineError
from engine.methods.adapters import Adapter
from engine.models import LoadedModel
from engine.specs import _int_range, _prompts, _Spec
from engine.units import run_steps

DashboardSteps = Generator[tuple[str, int, int], None, dict[str, Any]]


@dataclass(frozen=True)
class DashboardSpec(_Spec):
    block: int  # the block the vector steers (its residuals are read there)
    prompts: tuple[str, ...] = ()  # the effect is read on these; they join the corpus too
    tokens: int = 20  # promoted and suppressed tokens shown, each
    contexts: int = 16  # top contexts (one per document)
    window: int = 8  # tokens either side of a context's top token
    bins: int = 40  # histogram bins
    nearest: int = 10  # prompts that put the residual stream furthest along the vector
    rank_by: Literal["max", "mean"] = "max"  # a prompt's best token, or its mean over tokens
    search: tuple[str, ...] = ()  # kinds of documents the nearest prompts come from; () = all
    bank: bool = True  # search the generic prompt bank (engine/discovery/bank.py)
    max_new_tokens: int = ANSWER_TOKENS  # greedy tokens per answer in the corpus; 0: prompts only
    # Block whose output the downstream search reads (a run's target hidden state − 1: where its
    # objective looks); None: no downstream search (engine/discovery/downstream.py).
    downstream: int | None = None

    def __post_init__(self) -> None:
        if self.prompts:
            _prompts(self.prompts)
        _int_range("block", self.block, 0, 1_000)
        _int_range("tokens shown", self.tokens, 1, 200)
        _int_range("contexts", self.contexts, 0, 200)
        _int_range("context window", self.window, 0, 64)
        _int_range("histogram bins", self.bins, 1, 400)
        _int_range("nearest prompts", self.nearest, 0, 200)
        _int_range("answer tokens", self.max_new_tokens, 0, 256)
        if self.downstream is not None:
            _int_range("downstream block", self.downstream, self.block + 1, 1_000)
        if self.rank_by not in ("max", "mean"):
            raise EngineError(f"rank prompts by max or mean, got {self.rank_by!r}")


def _cosines(vector: Tensor, concepts: Mapping[str, Tensor]) -> list[dict[str, Any]]:
    rows = []
    for name, other in concepts.items():
        if other.shape != vector.shape:
            raise EngineError(f"concept {name!r} has width {other.shape[-1]}, the vector {vector.shape[0]}")
        cos = torch.nn.functional.cosine_similarity(vector.float(), other.float(), dim=0)
        rows.append({"name": name, "cosine": round(float(cos), 4)})
    return sorted(rows, key=lambda r: -abs(r["cosine"]))


def dashboard(
    lm: LoadedModel,
    spec: DashboardSpec,
    *,
    vector: Tensor | None = None,
    adapter: Adapter | None = None,
    corpus: Corpus | None = None,
    concepts: Mapping[str, Tensor] | None = None,
    base: Tensor | None = None,
    downstream: Corpus | None = None,
    embedder: Embedder | None = None,
    answers: Tensor | None = None,
    steered: list[str] | None = None,
) -> dict[str, Any]:
    """The payload for a vector at `spec.block` (or an adapter): see docs/discovery.md for its shape.
    `base`: `unsteered_logprobs(lm, spec.prompts)`, when reading many vectors on the same prompts;
    `downstream`: the corpus at `spec.downstream`, for the downstream search; `embedder` and
    `answers` (the corpus's answers embedded, engine/discovery/alike.py), for the search by answers,
    with `steered`, the prompts answered steered (answered here when not given)."""
    began = time.perf_counter()
    if (vector is None) == (adapter is None):
        raise EngineError("give a vector or an adapter")
    if vector is not None:
        if vector.shape != (lm.info.width,) or not bool(torch.isfinite(vector).all()):
            raise EngineError(f"the vector must be {lm.info.width} finite numbers")
        if float(vector.norm()) == 0:
            raise EngineError("the vector is zero: it has no direction to read")
    last = lm.info.n_blocks - 1
    for name, b in (("block", spec.block), ("downstream block", spec.downstream)):
        if b is not None and not 0 <= b <= last:
            raise EngineError(f"{name} {b} is out of range: the model has blocks 0..{last}")
    seconds: dict[str, float] = {}
    direct = None
    if vector is not None:
        cosine, logits = direct_read(lm, vector)
        direct = {**token_rows(lm, cosine, spec.tokens, {"logit": logits}), "ranked_by": "cosine"}
    effect = None
    if spec.prompts:
        change, kl = effect_logprobs(
            lm, spec.prompts, block=spec.block, vector=vector, adapter=adapter, base=base
        )
        effect = {
            **token_rows(lm, change, spec.tokens),
            "kl": round(kl, 5),
            "prompts": len(spec.prompts),
            "position": "last prompt token",
            "scale": 1.0,
        }
    seconds["tokens"] = time.perf_counter() - began
    payload: dict[str, Any] = {
        "kind": "vector" if vector is not None else "adapter",
        "block": spec.block,
        "norm": None if vector is None else round(float(vector.norm()), 4),
        "tokens": {"direct": direct, "effect": effect},
        "corpus": None,
        "contexts": [],
        "histogram": None,
        "prompts": [],
        "concepts": [] if vector is None else _cosines(vector, concepts or {}),
        "downstream": None,
        "alike": None,
    }
    if vector is not None and corpus is not None:
        if corpus.block != spec.block:
            raise EngineError(f"the corpus was read at block {corpus.block}, the vector steers {spec.block}")
        t0 = time.perf_counter()
        values = corpus.project(vector)  # [N] centred projections
        seconds["project"] = time.perf_counter() - t0
        kinds: dict[str, int] = {}
        for d in corpus.documents:
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
        unit = vector.double() / vector.double().norm()
        payload["corpus"] = {
            "documents": len(corpus.documents),
            "tokens": corpus.size,
            "kinds": kinds,
            "residual": f"block {spec.block} output (hidden_states[{spec.block + 1}])",
            "centre": "corpus mean",
            "mean_projection": round(float(corpus.mean @ unit), 4),  # the mean's own, before centring
        }
        payload["contexts"] = top_contexts(corpus, values, lm.tokenizer, k=spec.contexts, window=spec.window)
        payload["histogram"] = histogram(corpus, values, spec.bins)
        payload["prompts"] = nearest_prompts(
            corpus, values, lm.tokenizer, k=spec.nearest, kinds=spec.search or None, rank_by=spec.rank_by
        )
    if vector is not None and downstream is not None and spec.downstream is not None and spec.prompts:
        if downstream.block != spec.downstream:
            raise EngineError(
                f"the downstream corpus was read at block {downstream.block}, not {spec.downstream}"
            )
        t0 = time.perf_counter()
        change = downstream_change(lm, vector, block=spec.block, read=spec.downstream, prompts=spec.prompts)
        moved = float(change.norm()) > 0
        payload["downstream"] = {
            "block": spec.downstream,
            "residual": f"block {spec.downstream} output (hidden_states[{spec.downstream + 1}])",
            "positions": "user turn: the change's mean over the given prompts, each prompt's mean",
            "change_norm": round(float(change.norm()), 4),
            "prompts": nearest_prompts(
                downstream,
                downstream.project(change),
                lm.tokenizer,
                k=spec.nearest,
                kinds=spec.search or None,
                rank_by="mean",
            )
            if moved
            else [],
        }
        seconds["downstream"] = time.perf_counter() - t0
    if (
        vector is not None
        and corpus is not None
        and embedder is not None
        and answers is not None
        and spec.prompts
    ):
        t0 = time.perf_counter()
        payload["alike"] = _alike(lm, spec, vector, corpus, embedder, answers, steered)
        seconds["alike"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - began
    payload["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
    return payload


def _alike(
    lm: LoadedModel,
    spec: DashboardSpec,
    vector: Tensor,
    corpus: Corpus,
    embedder: Embedder,
    answers: Tensor,
    steered: list[str] | None,
) -> dict[str, Any] | None:
    """The search by answers, where the corpus holds answers to compare with (none: None)."""
    plain = plain_answers(corpus, spec.prompts)
    if not any(a.strip() for a in plain):
        return None
    if steered is None:
        steered = run_steps(
            steered_answer_steps(
                lm, vector, block=spec.block, prompts=spec.prompts, max_new_tokens=spec.max_new_tokens
            )
        )
    if len(steered) != len(spec.prompts):
        raise EngineError(f"give one steered answer per prompt: {len(steered)} for {len(spec.prompts)}")
    change = answer_change(embedder, steered, plain)
    same = steered == plain  # nothing said differently: nothing to search for
    return {
        "embedder": EMBEDDER_NAME,
        "scale": 1.0,
        "changed": sum(s != p for s, p in zip(steered, plain, strict=True)),
        "change_norm": round(float(change.norm()), 4),
        "steered": [{"prompt": p, "answer": a} for p, a in zip(spec.prompts, steered, strict=True)],
        "prompts": []
        if same
        else alike_prompts(corpus, answers, change, k=spec.nearest, kinds=spec.search or None),
    }


def dashboard_steps(
    lm: LoadedModel,
    data: Path,
    spec: DashboardSpec,
    *,
    vector: Tensor | None = None,
    adapter: Adapter | None = None,
    concepts: Mapping[str, Tensor] | None = None,
    base: Tensor | None = None,
    bank: bool | int | None = None,
    embedder: Embedder | None = None,
) -> DashboardSteps:
    """The corpus at the vector's block and at the downstream block (built where missing, one unit
    per `next()`: see engine/discovery/corpus.py; the downstream block's residual pass is phase
    "downstream"), with an embedder the corpus's answers embedded (phase "embedding", cached) and
    the prompts answered steered (phase "steered"), then the payload. Adapters need no corpus.
    `bank`: the bank's share (True, False or its first N prompts), where it is not `spec.bank`."""
    corpus = later = answers = steered = None
    if vector is not None:
        shared = spec.bank if bank is None else bank

        def at(block: int) -> CorpusSteps:
            return corpus_steps(
                lm, data, block, prompts=spec.prompts, bank=shared, max_new_tokens=spec.max_new_tokens
            )

        corpus = yield from at(spec.block)
        if spec.downstream is not None and spec.prompts:
            steps = at(spec.downstream)  # the answers are on disk by now: only residuals are left
            while True:
                try:
                    _, done, total = next(steps)
                except StopIteration as end:
                    later = end.value
                    break
                yield "downstream", done, total
        if embedder is not None and spec.prompts and spec.max_new_tokens > 0:
            answers = yield from answer_embedding_steps(embedder, corpus)
            steered = yield from steered_answer_steps(
                lm, vector, block=spec.block, prompts=spec.prompts, max_new_tokens=spec.max_new_tokens
            )
    yield "dashboard", 0, 1
    return dashboard(
        lm,
        spec,
        vector=vector,
        adapter=adapter,
        corpus=corpus,
        concepts=concepts,
        base=base,
        downstream=later,
        embedder=embedder,
        answers=answers,
        steered=steered,
    )
