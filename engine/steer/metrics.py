"""How much a steering vector changes the model: next-token KL, downstream deltas, cosines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import EngineError
from engine.models import get_blocks
from engine.prompts import PromptBatch
from engine.steer.segment import Segment
from engine.steer.steering import steer


def _check_vectors(deltas: Tensor, width: int | None = None) -> None:
    if deltas.dim() != 2:
        raise EngineError(f"vectors must be a [K, d] matrix, got shape {tuple(deltas.shape)}")
    if width is not None and deltas.shape[1] != width:
        raise EngineError(f"vectors have width {deltas.shape[1]}, the model needs {width}")
    if not bool(torch.isfinite(deltas).all()):
        raise EngineError("vectors contain NaN or infinite values")


def _last_logprobs(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    """Float32 log-probabilities of the next token after each row's last prompt token: [B, V]."""
    # Left padding puts every row's last real token at index -1; only that position needs logits.
    out = model(**inputs, use_cache=False, logits_to_keep=1)
    return F.log_softmax(out.logits[:, -1, :].float(), dim=-1)


@torch.no_grad()
def next_token_kl(
    model: nn.Module, batch: PromptBatch, block: int, deltas: Tensor, *, chunk: int = 32
) -> Tensor:
    """KL(P_steered ‖ P_unsteered) of the next token at the prompt end, averaged over prompts: [K].

    deltas [K, d] are added at block `block`'s output; rows are run vector-major in chunks of
    `chunk` vectors (chunk * P rows per forward).
    """
    _check_vectors(deltas)
    device = next(model.parameters()).device
    batch = batch.to(device)
    n_prompts = batch.size
    base = _last_logprobs(model, batch.model_inputs())  # [P, V]
    out: list[Tensor] = []
    for start in range(0, deltas.shape[0], chunk):
        part = deltas[start : start + chunk].float()  # [k, d]
        k = part.shape[0]
        inputs = {name: t.repeat(k, 1) for name, t in batch.model_inputs().items()}  # [k*P, T]
        rows = part.repeat_interleave(n_prompts, dim=0).to(device)  # [k*P, d], row j*P+i = vector j
        with steer(model, block, rows):
            steered = _last_logprobs(model, inputs)  # [k*P, V]
        ref = base.repeat(k, 1)  # [k*P, V]
        prob = steered.exp()
        # A token the steered model gives probability 0 contributes 0 (not 0 * -inf = NaN).
        kl = torch.where(prob > 0, prob * (steered - ref), 0.0).sum(dim=-1)  # [k*P]
        out.append(kl.view(k, n_prompts).mean(dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def median_norm(hidden: Tensor, mask: Tensor) -> float:
    """Median over the masked positions of the per-token norm of hidden [P, T, d] (mask [P, T])."""
    if not bool(mask.any()):
        raise EngineError("no target positions selected: choose other positions or longer prompts")
    return float(hidden[mask.to(hidden.device)].float().norm(dim=-1).median())


def residual_norm(
    where: Segment | nn.Module, mask: Tensor, *, batch: PromptBatch | None = None, block: int | None = None
) -> float:
    """Median residual norm at the source block's output over the masked positions.

    Give a Segment (its cached source activations are used), or a model with `batch` and `block`.
    R is reported relative to this so that radii transfer between models.
    """
    if isinstance(where, Segment):
        return median_norm(where.h_source, mask)
    if batch is None or block is None:
        raise EngineError("residual_norm needs a Segment, or a model with a prompt batch and a block")
    blocks = get_blocks(where)
    if not 0 <= block < len(blocks):
        raise EngineError(f"block {block} is out of range: the model has blocks 0..{len(blocks) - 1}")
    captured: list[Tensor] = []

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        captured.append((output[0] if isinstance(output, tuple) else output).detach())

    device = next(where.parameters()).device
    handle = blocks[block].register_forward_hook(keep)
    try:
        with torch.no_grad():
            # logits_to_keep=1: the LM head over every position would cost as much as several blocks.
            where(**batch.to(device).model_inputs(), use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return median_norm(captured[0], mask)


def downstream_deltas(seg: Segment, vectors: Tensor, mask: Tensor, *, chunk: int = 16) -> Iterator[Tensor]:
    """Z_t(θ) − Z_t(0) on the masked positions, float32, per chunk of vectors: [k, N, d] each.

    N = mask.sum() (target positions of all prompts, prompt-major). Chunks bound the memory of
    Segment.run, whose activations are chunk × P × T × (MLP width).
    """
    _check_vectors(vectors, int(seg.h_source.shape[-1]))
    mask = mask.to(seg.h_source.device)
    n = int(mask.sum())
    z0 = seg.z0[mask].float()  # [N, d]
    for start in range(0, vectors.shape[0], chunk):
        part = vectors[start : start + chunk].to(seg.h_source.device)  # [k, d]
        k = part.shape[0]
        with torch.no_grad():
            z = seg.run(part)  # [k*P, T, d]
        yield z[mask.repeat(k, 1)].float().view(k, n, -1) - z0  # [k, N, d]


def downstream_norms(seg: Segment, vectors: Tensor, mask: Tensor, *, chunk: int = 16) -> Tensor:
    """Mean over target positions of ‖Z_t(θ) − Z_t(0)‖ per vector: [K]."""
    parts = [d.norm(dim=-1).mean(dim=1).cpu() for d in downstream_deltas(seg, vectors, mask, chunk=chunk)]
    return torch.cat(parts) if parts else torch.zeros(0)


def cosine_matrix(vectors: Tensor) -> Tensor:
    """Pairwise cosine similarities of the rows of vectors [K, D]: [K, K] (0 for zero rows)."""
    if vectors.dim() != 2:
        raise EngineError(f"vectors must be a [K, d] matrix, got shape {tuple(vectors.shape)}")
    unit = F.normalize(vectors.double(), dim=1)  # float64: exact invariants (|cos| ≤ 1e-6) are tested
    return (unit @ unit.T).float()


def downstream_cosine_matrix(seg: Segment, vectors: Tensor, mask: Tensor, *, chunk: int = 16) -> Tensor:
    """Cosines between vectors' downstream effects (Δ flattened over target positions): [K, K]."""
    flat = [d.flatten(1).cpu() for d in downstream_deltas(seg, vectors, mask, chunk=chunk)]  # [k, N*d]
    if not flat:
        return torch.zeros(0, 0)
    return cosine_matrix(torch.cat(flat))
