"""Trigger hunting by what the model says: the corpus prompts whose own unsteered answer reads like
the answers a vector steers the model into.

The searches by direction (engine/discovery/occurrence.py at the steered block, downstream.py at
the block a run's objective looked at) find the inputs that put the residual stream where a vector
puts it. A vector found without supervision can reach its behaviour by a road no natural input
takes, and then both miss the prompts that bring the behaviour out on their own. This search reads
answers instead. The run prompts are answered greedily, steered at ×1, as the corpus answered them
unsteered; in sentence-embedding space (engine/discovery/embedder.py) the steered answers' mean less
the unsteered answers' mean is what the vector changed in what the model says; every corpus prompt
is ranked by its own cached answer's embedding along that change. At the top: prompts the model
already answers the way the vector makes it answer, without any steering.

    embedded = run_steps(answer_embedding_steps(embedder, corpus))   # cached beside the corpus
    steered = run_steps(steered_answer_steps(lm, vector, block=7, prompts=run_prompts, max_new_tokens=64))
    change = answer_change(embedder, steered, plain_answers(corpus, run_prompts))
    rows = alike_prompts(corpus, embedded, change)
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Generator, Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.decode.decoder import Decoder
from engine.decode.request import GenerationRequest
from engine.discovery.corpus import ANSWER_ROWS, Corpus
from engine.discovery.embedder import EMBEDDER_NAME, Embedder
from engine.discovery.occurrence import document_row
from engine.errors import EngineError
from engine.models import LoadedModel

EMBED_ROWS = 64  # answers embedded per unit
SNIPPET = 240  # characters of a prompt's own answer kept in a row

EmbeddingSteps = Generator[tuple[str, int, int], None, Tensor]


def answer_embedding_steps(embedder: Embedder, corpus: Corpus) -> EmbeddingSteps:
    """Every corpus document's answer embedded ([D, width] float32, unit rows; a document without
    an answer gets a zero row), read from each shard's folder or embedded now and stored there, one
    unit ("embedding", done, total) per EMBED_ROWS answers."""
    total = len(corpus.documents)
    done = 0
    out = []
    for documents, folder in corpus.shards:
        path = folder / f"answers-{EMBEDDER_NAME}.npy"
        if path.is_file():
            stored = torch.from_numpy(np.load(path))
            if stored.shape == (len(documents), embedder.width):
                out.append(stored)
                done += len(documents)
                continue
        rows = []
        for lo in range(0, len(documents), EMBED_ROWS):
            chunk = documents[lo : lo + EMBED_ROWS]
            embedded = embedder.encode([d.completion for d in chunk])
            has_answer = torch.tensor([bool(d.completion.strip()) for d in chunk])[:, None]
            rows.append(torch.where(has_answer, embedded, torch.zeros_like(embedded)))
            done += len(chunk)
            yield "embedding", done, total
        shard = torch.cat(rows) if rows else torch.zeros(0, embedder.width)
        tmp = folder / f"answers-{EMBEDDER_NAME}.partial-{os.getpid()}.npy"
        np.save(tmp, shard.numpy())
        os.replace(tmp, path)  # readers see a finished file or none
        out.append(shard)
    return torch.cat(out) if out else torch.zeros(0, embedder.width)


def plain_answers(corpus: Corpus, prompts: Sequence[str]) -> list[str]:
    """The corpus's own (unsteered, greedy) answers to these prompts, in their order."""
    by_prompt = {d.prompt: d.completion for d in corpus.documents}
    missing = [p for p in prompts if p not in by_prompt]
    if missing:
        raise EngineError(f"{len(missing)} of the prompts are not in the corpus, e.g. {missing[0][:60]!r}")
    return [by_prompt[p] for p in prompts]


def steered_answer_steps(
    lm: LoadedModel,
    vector: Tensor,
    *,
    block: int,
    prompts: Sequence[str],
    max_new_tokens: int,
    scale: float = 1.0,
) -> Generator[tuple[str, int, int], None, list[str]]:
    """Greedy answers to the prompts with the vector added at `block` (every position) × scale, one
    decode step per unit ("steered", answers done, prompts)."""
    decoder = Decoder(lm, max_rows=max(1, min(len(prompts), ANSWER_ROWS)))
    terms = ((vector.detach().float(), scale),)
    for i, prompt in enumerate(prompts):
        request = GenerationRequest(prompt=prompt, block=block, terms=terms, max_new_tokens=max_new_tokens)
        decoder.add(i, request)
    texts: dict[Hashable, str] = {}
    while decoder:
        texts.update((key, result.text) for key, result in decoder.step().finished)
        yield "steered", len(texts), len(prompts)
    return [texts[i] for i in range(len(prompts))]


def answer_change(embedder: Embedder, steered: Sequence[str], plain: Sequence[str]) -> Tensor:
    """Mean embedding of the steered answers less that of the unsteered ones: [width]."""
    if not steered or len(steered) != len(plain):
        raise EngineError("give one steered and one unsteered answer per prompt, at least one of each")
    embedded = embedder.encode([*steered, *plain])
    return embedded[: len(steered)].mean(dim=0) - embedded[len(steered) :].mean(dim=0)


def alike_prompts(
    corpus: Corpus,
    embedded: Tensor,
    change: Tensor,
    *,
    k: int = 10,
    kinds: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    """The k documents (of these kinds; None: all) whose own answer's embedding lies furthest along
    `change`, each with that answer and the number of searched documents whose answer is the same
    text. Documents without an answer are never listed."""
    if embedded.shape != (len(corpus.documents), change.shape[0]):
        raise EngineError(
            f"the answer embeddings are {tuple(embedded.shape)}, the corpus has {len(corpus.documents)} "
            f"documents and the change {change.shape[0]} entries"
        )
    raw = (embedded @ change.float()).tolist()
    # Many prompts can share one answer word for word (a behaviour the model gives by heart): they
    # share its first copy's score (embedded in other batches, copies can differ in the last bits),
    # keep the corpus's order among them, and each row says how many searched prompts answer so.
    first: dict[str, float] = {}
    scores = torch.tensor(
        [first.setdefault(d.completion, r) for d, r in zip(corpus.documents, raw, strict=True)]
    )
    keep = torch.tensor(
        [bool(d.completion.strip()) and (kinds is None or d.kind in kinds) for d in corpus.documents]
    )
    scores = torch.where(keep, scores, -torch.inf)
    order = torch.sort(scores, descending=True, stable=True).indices[:k].tolist()
    same = Counter(d.completion for d, kept in zip(corpus.documents, keep.tolist(), strict=True) if kept)
    rows = []
    for index in order:
        if not bool(keep[index]):
            break
        doc = corpus.documents[index]
        row = {**document_row(doc, index), "score": round(float(scores[index]), 4)}
        rows.append({**row, "answer": doc.completion[:SNIPPET], "same_answer": same[doc.completion]})
    return rows
