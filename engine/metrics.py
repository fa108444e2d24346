"""How much a steering vector changes the model: next-token KL, downstream deltas, cosines."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import EngineError
from engine.prompts import PromptBatch
from engine.steering import steer


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
