"""Where a direction occurs in a corpus: its top contexts, the histogram of its projections, and
the prompts that put the residual stream there (trigger hunting), from `Corpus.project`'s values.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from engine.discovery.corpus import Corpus, Document
from engine.discovery.tokens import token_text
from engine.errors import EngineError

RankBy = Literal["max", "mean"]


def _texts(tokenizer: Any, ids: list[int]) -> list[str]:
    return [token_text(tokenizer, i) for i in ids]


def _per_document(corpus: Corpus, values: Tensor, where: Tensor | None, how: str) -> Tensor:
    """Each document's max (or mean) of values over its positions in `where` ([N] bool): [D].
    Documents with no such position get -inf."""
    docs = corpus.document_of if where is None else corpus.document_of[where]
    vals = values if where is None else values[where]
    n_docs = len(corpus.documents)
    if how == "max":
        out = torch.full((n_docs,), -torch.inf)
        return out.scatter_reduce(0, docs, vals, "amax", include_self=True)
    total = torch.zeros(n_docs, dtype=torch.float64).index_add_(0, docs, vals.double())
    ones = torch.ones_like(vals, dtype=torch.float64)
    count = torch.zeros(n_docs, dtype=torch.float64).index_add_(0, docs, ones)
    return torch.where(count > 0, total / count.clamp_min(1), -torch.inf).float()


def document_row(doc: Document, index: int) -> dict[str, Any]:
    return {"document": index, "prompt": doc.prompt, "kind": doc.kind, "label": doc.label}


def top_contexts(
    corpus: Corpus, values: Tensor, tokenizer: Any, *, k: int = 16, window: int = 8, lowest: bool = False
) -> list[dict[str, Any]]:
    """The k documents whose best token projects highest (lowest), one context each: the tokens
    within `window` of that token in its document, each with its projection."""
    signed = -values if lowest else values
    best = _per_document(corpus, signed, None, "max")  # [D]
    top = torch.topk(best, min(k, len(best))).indices
    rows = []
    for d in top.tolist():
        doc = corpus.documents[d]
        start, end = int(corpus.starts[d]), int(corpus.starts[d + 1])
        focus = start + int(torch.argmax(signed[start:end]))
        lo, hi = max(start, focus - window), min(end, focus + window + 1)
        ids = corpus.token_ids[lo:hi].tolist()
        rows.append(
            {
                **document_row(doc, d),
                "part": "prompt" if bool(corpus.in_prompt[focus]) else "answer",
                "value": round(float(values[focus]), 4),
                "focus": focus - lo,  # index of the top token in `tokens`
                "tokens": [
                    {"text": t, "value": round(float(v), 4)}
                    for t, v in zip(_texts(tokenizer, ids), values[lo:hi].tolist(), strict=True)
                ],
            }
        )
    return rows


def histogram(corpus: Corpus, values: Tensor, bins: int = 40) -> dict[str, Any]:
    """Counts of the projections in `bins` equal bins from min to max, prompt and answer tokens
    apart, and a few quantiles of all of them."""
    if bins < 1:
        raise EngineError(f"a histogram needs at least one bin, got {bins}")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1e-6
    prompt = torch.histc(values[corpus.in_prompt], bins, low, high)
    answer = torch.histc(values[~corpus.in_prompt], bins, low, high)
    q = torch.quantile(values[:: max(1, len(values) // 200_000)], torch.tensor([0.01, 0.5, 0.99]))
    return {
        "edges": [round(low + (high - low) * i / bins, 4) for i in range(bins + 1)],
        "prompt": [int(c) for c in prompt.tolist()],
        "answer": [int(c) for c in answer.tolist()],
        "std": round(float(values.std()), 4),
        "quantiles": {name: round(float(v), 4) for name, v in zip(("p01", "p50", "p99"), q, strict=True)},
    }


def nearest_prompts(
    corpus: Corpus,
    values: Tensor,
    tokenizer: Any,
    *,
    k: int = 10,
    kinds: tuple[str, ...] | None = None,
    rank_by: RankBy = "max",
) -> list[dict[str, Any]]:
    """The k prompts (of these kinds; None: all) whose own tokens project highest: by their best
    prompt token ("max") or their mean over prompt tokens ("mean"). Answers are not read, so a
    prompt ranks by what it puts in the residual stream, not by what the model replied."""
    if rank_by not in ("max", "mean"):
        raise EngineError(f"rank prompts by max or mean, got {rank_by!r}")
    scores = _per_document(corpus, values, corpus.in_prompt, rank_by)  # [D]
    if kinds is not None:
        keep = torch.tensor([d.kind in kinds for d in corpus.documents])
        scores = torch.where(keep, scores, -torch.inf)
    top = torch.topk(scores, min(k, len(scores)))
    rows = []
    for score, d in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        if score == -float("inf"):
            break
        start, end = int(corpus.starts[d]), int(corpus.starts[d + 1])
        prompt_values = torch.where(corpus.in_prompt[start:end], values[start:end], -torch.inf)
        focus = start + int(torch.argmax(prompt_values))
        token = _texts(tokenizer, [int(corpus.token_ids[focus])])[0]
        rows.append({**document_row(corpus.documents[d], d), "score": round(score, 4), "token": token})
    return rows
