"""The tokens a steering vector pushes: read directly through the unembedding, and in effect.

Direct: the vector is read as if it were the whole residual at the end of the model, through the
final norm and the unembedding: r = norm(v) − norm(0), logits = W_U · r (the LM head's bias, if
any, left out too). Subtracting norm(0) drops the norm's bias (LayerNorm's; RMSNorm has none),
which is the same for every vector and would otherwise rank its own favourite tokens first. The
norm's division by the residual's size is kept, so the read depends on the vector's direction
only; LayerNorm's centring and every norm's weight (Gemma's 1 + w too) apply as to a residual.
The blocks between the vector's block and the end are ignored: that is what "direct" means.

Tokens are ranked by the cosine between r and their unembedding row, W_U[j] · r / (|W_U[j]| |r|):
the raw logit W_U[j] · r, in units of how far that token's logit swings for a residual of r's
size in a random direction. On the embedded model raw logits put a few tokens with long rows
first for almost any direction ('<filename>', 'Ġstrugg', 'Ġnoqa'): the vector along " Paris"'s own
row, through the norm, ranks " Paris" 1st by cosine and 24th by raw logit. Each row
carries its raw logit too (less the mean over the vocabulary).

Effect: the mean change of the next token's log-probabilities at the last prompt position (where
the answer's first token is chosen) over the given prompts, steered at scale 1 (the vector added
at block s's output at every prompt position, as generation adds it) against unsteered. Steering
adapters are read in effect only: their change depends on the token, so there is no one direction
to read directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import EngineError
from engine.methods.adapters import Adapter, adapt
from engine.models import LoadedModel
from engine.prompts import encode_prompts
from engine.steer.steering import steer

# Where each architecture keeps its final norm, tried in order.
_NORM_PATHS = (
    "model.norm",  # Llama, Qwen, Mistral, Gemma
    "model.language_model.norm",  # Gemma 3 multimodal wrapper
    "transformer.ln_f",  # GPT-2
    "gpt_neox.final_layer_norm",  # GPT-NeoX / Pythia
    "model.final_layernorm",  # Phi
    "model.decoder.final_layer_norm",  # OPT-style
)


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the residual before the unembedding."""
    for path in _NORM_PATHS:
        node: Any = model
        for attr in path.split("."):
            node = getattr(node, attr, None)
            if node is None:
                break
        if isinstance(node, nn.Module):
            return node
    raise EngineError(f"cannot find the final norm of {type(model).__name__}")


def check_width(lm: LoadedModel, vector: Tensor) -> None:
    if vector.shape != (lm.info.width,):
        raise EngineError(f"the vector has shape {tuple(vector.shape)}, the model needs ({lm.info.width},)")


def unembedding(model: nn.Module) -> nn.Module:
    """The LM head: residual (after the final norm) to logits."""
    transformer: Any = model
    head: nn.Module = transformer.get_output_embeddings()
    return head


def vocabulary(lm: LoadedModel) -> int:
    """Logit rows that are real tokens (some models pad the unembedding past the tokenizer)."""
    weight: Any = unembedding(lm.model).weight
    return min(int(weight.shape[0]), len(lm.tokenizer))


@torch.no_grad()
def direct_read(lm: LoadedModel, vector: Tensor) -> tuple[Tensor, Tensor]:
    """Each token's cosine with r = norm(v) − norm(0), and its logit W_U · r less the mean over
    the vocabulary: two float32 [V]."""
    check_width(lm, vector)
    param = next(lm.model.parameters())
    norm = final_norm(lm.model)
    v = vector.detach().to(device=param.device, dtype=param.dtype)[None, None]  # [1, 1, d]
    read = (norm(v) - norm(torch.zeros_like(v)))[0, 0].float().cpu()  # [d]
    weight: Any = unembedding(lm.model).weight
    rows = weight[: vocabulary(lm)].detach().float().cpu()  # [V, d]
    logits = rows @ read  # [V]
    cosine = logits / (rows.norm(dim=1) * read.norm()).clamp_min(1e-30)
    return cosine, logits - logits.mean()


def _last_logprobs(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    """Log-probabilities of the token after each row's last prompt token: float32 [B, V]."""
    out = model(**inputs, use_cache=False, logits_to_keep=1)
    return F.log_softmax(out.logits[:, -1, :].float(), dim=-1)


@torch.no_grad()
def unsteered_logprobs(lm: LoadedModel, prompts: Sequence[str]) -> Tensor:
    """The next token's log-probabilities after each prompt, unsteered: float32 [P, V]. What
    `effect_logprobs` compares with: compute it once for many vectors on the same prompts."""
    if not prompts:
        raise EngineError("give at least one prompt to read a vector's effect on")
    device = next(lm.model.parameters()).device
    return _last_logprobs(lm.model, encode_prompts(lm.tokenizer, list(prompts)).to(device).model_inputs())


@torch.no_grad()
def effect_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    block: int | None = None,
    vector: Tensor | None = None,
    adapter: Adapter | None = None,
    scale: float = 1.0,
    base: Tensor | None = None,
) -> tuple[Tensor, float]:
    """Mean over prompts of log p_steered − log p_unsteered for the next token at the last prompt
    position ([V] float32), and the mean KL(steered ‖ unsteered) there. `base`: the prompts'
    `unsteered_logprobs`, if already computed (it saves one of the two forward passes)."""
    if not prompts:
        raise EngineError("give at least one prompt to read a vector's effect on")
    if (vector is None) == (adapter is None):
        raise EngineError("give a vector (with its block) or an adapter")
    device = next(lm.model.parameters()).device
    batch = encode_prompts(lm.tokenizer, list(prompts)).to(device)
    inputs = batch.model_inputs()
    if base is None:
        base = _last_logprobs(lm.model, inputs)  # [P, V]
    elif base.shape[0] != batch.size:
        raise EngineError(
            f"the unsteered log-probabilities are for {base.shape[0]} prompts, not {batch.size}"
        )
    base = base.to(device)
    if vector is not None:
        if block is None:
            raise EngineError("a vector needs the block it steers")
        check_width(lm, vector)
        with steer(lm.model, block, scale * vector.detach().float()):
            steered = _last_logprobs(lm.model, inputs)
    else:
        assert adapter is not None
        with adapt(lm.model, adapter.scaled(scale), batch.size):
            steered = _last_logprobs(lm.model, inputs)
    change = (steered - base).mean(dim=0)[: vocabulary(lm)].cpu()  # [V]
    prob = steered.exp()
    kl = torch.where(prob > 0, prob * (steered - base), 0.0).sum(dim=-1).mean()
    return change, float(kl)


def token_text(tokenizer: Any, token: int) -> str:
    """A token as text; a piece of a multi-byte character that does not decode alone is shown as
    the tokenizer spells it."""
    text = str(tokenizer.decode([token]))
    return str(tokenizer.convert_ids_to_tokens(token)) if "\ufffd" in text else text


def token_rows(
    lm: LoadedModel, values: Tensor, k: int, also: Mapping[str, Tensor] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The k highest (promoted) and k lowest (suppressed) tokens: id, text as decoded, value, and
    the token's entry in each of `also`'s [V] tensors."""
    k = min(k, values.shape[0])
    high = torch.topk(values, k)
    low = torch.topk(-values, k)

    def rows(ids: Tensor) -> list[dict[str, Any]]:
        return [
            {
                "id": int(i),
                "text": token_text(lm.tokenizer, int(i)),
                "value": round(float(values[i]), 4),
                **{name: round(float(t[i]), 4) for name, t in (also or {}).items()},
            }
            for i in ids
        ]

    return {"promoted": rows(high.indices), "suppressed": rows(low.indices)}
