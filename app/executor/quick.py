"""Quick requests: answered in one unit of the compute loop, before anything that can wait.

Checking a spec against its model, rendering prompts, checking a chat's rows, the downstream
cosines of the compare page, and reading or writing vector and adapter files.
"""

from __future__ import annotations

from typing import Any

import torch

from app.executor import interop
from app.executor.codec import from_bytes
from app.executor.generations import chat_rows
from engine import LoadedModel, encode_prompts
from engine.generate import prompt_tokens
from engine.metrics import downstream_cosine_matrix
from engine.prompts import format_prompt, target_mask
from engine.segment import Segment
from engine.specs import default_source, default_target
from engine.validate import check_spec

KINDS = ("validate", "render", "check_chat", "downstream", "export_vectors", "parse_vectors", "export_peft")


def answer(lm: LoadedModel, message: dict[str, Any]) -> Any:
    """The reply to one quick request."""
    kind = message["type"]
    if kind == "validate":
        spec = check_spec(lm, message["kind"], message["spec"], reserve=int(message.get("reserve", 0)))
        return {"spec": spec, "model": lm.info.to_dict()}
    if kind == "render":
        return _render(lm, message["prompts"])
    if kind == "check_chat":
        # Every check decoding would make, without decoding: prompt lengths per row.
        return {"model": lm.info.to_dict(), "tokens": [prompt_tokens(lm, r) for r in chat_rows(message)]}
    if kind == "export_vectors":
        return interop.export(message)
    if kind == "export_peft":
        return interop.peft(lm, message)
    if kind == "parse_vectors":
        return {**interop.parse({**message, "width": lm.info.width}), "model": lm.info.to_dict()}
    if kind == "downstream":
        return _downstream(lm, message)
    raise ValueError(f"unknown quick request {kind}")


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


def _downstream(lm: LoadedModel, message: dict[str, Any]) -> dict[str, Any]:
    """Cosines between the vectors' effects at the target block on one prompt (user-turn positions)."""
    block = int(message["block"])
    target = message.get("target") or default_target(lm.info.n_blocks, block)
    vectors = torch.stack([from_bytes(v) for v in message["vectors"]])
    batch = encode_prompts(lm.tokenizer, [message["prompt"]])
    device = next(lm.model.parameters()).device
    seg = Segment(lm.model, batch.to(device), block, target)
    matrix = downstream_cosine_matrix(seg, vectors.to(device), target_mask(batch, "user").to(device))
    return {"matrix": matrix.tolist()}
