"""Quick requests: answered in one unit of the compute loop, before anything that can wait.

Checking a spec against its model, rendering prompts, checking a chat's rows, the downstream
cosines of the compare page, and reading or writing vector and adapter files.
"""

from __future__ import annotations

from typing import Any

import torch

from app.executor import interop
from app.executor.codec import adapter_from, from_bytes
from app.executor.generations import chat_rows
from app.executor.protocol import (
    CheckChat,
    Downstream,
    ExportPeft,
    ExportVectors,
    ParseVectors,
    Render,
    Request,
    ScoreConcept,
    Validate,
)
from engine import EngineError, LoadedModel, encode_prompts
from engine.decode.generate import prompt_tokens
from engine.methods.adapters import mlp_out
from engine.methods.concepts import Concept, concept_scores
from engine.prompts import format_prompt, target_mask
from engine.specs import default_source, default_target
from engine.steer.metrics import cosine_matrix, downstream_cosine_matrix
from engine.steer.segment import Segment
from engine.validate import check_prompts, check_spec


def answer(lm: LoadedModel, message: Request) -> Any:
    """The reply to one quick request."""
    match message:
        case Validate():
            spec = check_spec(lm, message.kind, message.spec, reserve=message.reserve)
            return {"spec": spec, "model": lm.info.to_dict()}
        case Render():
            return _render(lm, message.prompts)
        case CheckChat():
            # Every check decoding would make, without decoding: prompt lengths per row.
            return {
                "model": lm.info.to_dict(),
                "tokens": [prompt_tokens(lm, r) for r in chat_rows(message.rows)],
            }
        case ExportVectors():
            return interop.export(message)
        case ExportPeft():
            return interop.peft(lm, message)
        case ParseVectors():
            return {**interop.parse(message, lm.info.width), "model": lm.info.to_dict()}
        case Downstream():
            return _downstream(lm, message)
        case ScoreConcept():
            return _concept_scores(lm, message)
    raise ValueError(f"{type(message).__name__} is not a quick request")


def _render(lm: LoadedModel, prompts: list[str]) -> dict[str, Any]:
    """How the model sees each prompt (its chat template), its length, and the default blocks."""
    shown = [format_prompt(lm.tokenizer, p) for p in prompts]
    lengths = [len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in shown]
    source = default_source(lm.info.n_blocks)
    return {
        "model": lm.info.to_dict(),
        "prompts": shown,
        "tokens": lengths,
        "source": source,
        "target": default_target(lm.info.n_blocks, source),
    }


def _downstream(lm: LoadedModel, message: Downstream) -> dict[str, Any]:
    """Cosines between the vectors' effects at the target block on one prompt (user-turn positions).
    An adapter's effect is that of its own change at each position: its factors on the prompt."""
    block = message.block
    target = message.target or default_target(lm.info.n_blocks, block)
    batch = encode_prompts(lm.tokenizer, [message.prompt])
    device = next(lm.model.parameters()).device
    mask = target_mask(batch, "user").to(device)
    adapters = {int(p["position"]): adapter_from(p) for p in message.adapters}
    if not adapters:
        vectors = torch.stack([from_bytes(v) for v in message.vectors])
        seg = Segment(lm.model, batch.to(device), block, target)
        return {"matrix": downstream_cosine_matrix(seg, vectors.to(device), mask).tolist()}
    if any(a.block != block for a in adapters.values()):
        raise EngineError("the downstream heatmap compares vectors and adapters at one block")
    seg = Segment(lm.model, batch.to(device), block, target, input_of=mlp_out(lm.model, block))
    assert seg.kept_input is not None
    effects = []
    for i, values in enumerate(message.vectors):
        a = adapters.get(i)
        if a is None:
            delta = from_bytes(values)[None]  # [1, d]: the same at every position
        else:  # [1, P, T, d]: R · B · (Aᵀ x) at each position x of the projection's input
            x = seg.kept_input.float()
            delta = a.coefficient * torch.einsum("ptf,fr,dr->ptd", x, a.down.to(x), a.up.to(x))[None]
        with torch.no_grad():
            z = seg.run(delta.to(device))
        effects.append((z[mask] - seg.z0[mask]).float().flatten().cpu())
    return {"matrix": cosine_matrix(torch.stack(effects)).tolist()}


def _concept_scores(lm: LoadedModel, message: ScoreConcept) -> dict[str, Any]:
    concept = Concept.from_dict(from_bytes(message.vector), message.concept)
    if concept.vector.shape[0] != lm.info.width or concept.block >= lm.info.n_blocks:
        raise EngineError("the concept was made on another model")
    check_prompts(lm, tuple(message.prompts), 0)  # each must fit the model's context
    scores = concept_scores(lm, concept, message.prompts)
    return {
        "threshold": concept.threshold,
        "scores": [
            {"prompt": p, "score": s, "present": s > concept.threshold}
            for p, s in zip(message.prompts, scores, strict=True)
        ],
    }
