"""Trigger hunting read downstream: the prompts that leave the model, as it starts to answer, where a
vector leaves it.

A vector found by an unsupervised search need not point where a trigger puts the residual stream at
the block it steers: it can reach the same behaviour by another road. What the behaviour needs is
the state the model is in downstream when it begins to answer. So this reads the vector's mean
change to a later block's output at the last prompt position (the run's prompts, steered at ×1),
and ranks the corpus's prompts by their own state there, at their last prompt position (centred by
the corpus mean), along that change.

    change = downstream_change(lm, vector, block=7, read=21, prompts=run_prompts)
    rows = states_along(corpus_at_21, change, k=10)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from engine.discovery.corpus import Corpus
from engine.discovery.occurrence import document_row
from engine.errors import EngineError
from engine.models import LoadedModel
from engine.prompts import encode_prompts
from engine.steer.capture import block_output
from engine.steer.steering import steer


@torch.no_grad()
def downstream_change(
    lm: LoadedModel, vector: Tensor, *, block: int, read: int, prompts: Sequence[str], scale: float = 1.0
) -> Tensor:
    """Mean over prompts of block `read`'s output at the last prompt position, steered (`vector`
    added to block `block`'s output at every position) minus unsteered: float32 [d]."""
    if not prompts:
        raise EngineError("give at least one prompt to read a vector's downstream change on")
    if not block < read < lm.info.n_blocks:
        raise EngineError(
            f"the downstream block must lie after the steered block {block} and at most "
            f"{lm.info.n_blocks - 1}, got {read}"
        )
    batch = encode_prompts(lm.tokenizer, list(prompts))
    plain = block_output(lm.model, read, batch.input_ids, batch.attention_mask)[:, -1]  # left-padded
    with steer(lm.model, block, scale * vector.detach().float()):
        steered = block_output(lm.model, read, batch.input_ids, batch.attention_mask)[:, -1]
    return (steered - plain).mean(dim=0).cpu()


def last_prompt_positions(corpus: Corpus) -> Tensor:
    """Each document's last prompt position in the store (where the model starts to answer): [D]."""
    return torch.tensor(
        [int(corpus.starts[i]) + d.answer - d.first - 1 for i, d in enumerate(corpus.documents)],
        dtype=torch.long,
    )


def states_along(
    corpus: Corpus,
    change: Tensor,
    *,
    k: int = 10,
    kinds: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    """The k documents (of these kinds; None: all) whose last prompt position lies furthest along
    `change` in `corpus`, read at the block the change was read at, each with its projection."""
    if float(change.norm()) == 0:
        raise EngineError("the vector changes nothing downstream: there is no direction to search along")
    values = corpus.project(change)[last_prompt_positions(corpus)]  # [D]
    if kinds is not None:
        keep = torch.tensor([d.kind in kinds for d in corpus.documents])
        values = torch.where(keep, values, -torch.inf)
    top = torch.topk(values, min(k, len(values)))
    rows = []
    for score, d in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        if score == -float("inf"):
            break
        rows.append({**document_row(corpus.documents[d], d), "score": round(score, 4)})
    return rows
