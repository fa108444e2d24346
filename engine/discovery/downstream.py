"""Trigger hunting read downstream: the prompts that put the model, further on, where a vector puts
it.

A vector found by an unsupervised search need not point where a trigger puts the residual stream at
the block it steers: it can reach the same behaviour by another road. So this reads where the road
leads: the vector's mean change to the output of a later block (the one its run's objective looked
at) over the user-turn positions of the run's prompts, steered at ×1. The corpus's prompts are then
ranked as the search at the steered block ranks them by their mean (engine/discovery/occurrence.py,
`rank_by="mean"`): by their own states at that later block, less the corpus mean, projected on that
change and averaged over their prompt positions (which also start at the user turn).

    change = downstream_change(lm, vector, block=7, read=21, prompts=run_prompts)
    rows = nearest_prompts(corpus_at_21, corpus_at_21.project(change), lm.tokenizer, rank_by="mean")
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from engine.errors import EngineError
from engine.models import LoadedModel
from engine.prompts import encode_prompts
from engine.steer.capture import block_output
from engine.steer.steering import steer


@torch.no_grad()
def downstream_change(
    lm: LoadedModel, vector: Tensor, *, block: int, read: int, prompts: Sequence[str], scale: float = 1.0
) -> Tensor:
    """Block `read`'s output steered (`vector` added to block `block`'s output at every position)
    minus unsteered, averaged over the prompts' user-turn positions (for a template without a user
    turn, every position but the attention sink at 0): float32 [d]."""
    if not prompts:
        raise EngineError("give at least one prompt to read a vector's downstream change on")
    if not block < read < lm.info.n_blocks:
        raise EngineError(
            f"the downstream block must lie after the steered block {block} and at most "
            f"{lm.info.n_blocks - 1}, got {read}"
        )
    batch = encode_prompts(lm.tokenizer, list(prompts))
    real = batch.attention_mask.bool()
    after_sink = real & (real.long().cumsum(dim=1) > 1)
    read_at = batch.user_mask.clone()
    for row in batch.unmatched:
        read_at[row] = after_sink[row]
    plain = block_output(lm.model, read, batch.input_ids, batch.attention_mask)
    with steer(lm.model, block, scale * vector.detach().float()):
        steered = block_output(lm.model, read, batch.input_ids, batch.attention_mask)
    return (steered - plain)[read_at].mean(dim=0).cpu()
