"""Checks of a job spec against the model it names: blocks in range, prompts within the context.

Callers that cannot load a model themselves (the web app) send the spec to a worker, which runs
`check_spec` and answers with the normalized spec or the EngineError's message.
"""

from __future__ import annotations

from typing import Any

from engine.errors import EngineError
from engine.methods.adapters import mlp_out
from engine.methods.concepts import ConceptSpec
from engine.models import LoadedModel
from engine.prompts import encode_prompts, format_prompt, target_mask
from engine.refine.specs import GeneralizeSpec, RPathSpec, SearchSpec
from engine.specs import (
    AdapterSpec,
    CalibrateSpec,
    ChainSpec,
    DctSpec,
    MelboSpec,
    SampleSpec,
    ScaleSweepSpec,
)

AnySpec = (
    MelboSpec
    | DctSpec
    | AdapterSpec
    | ChainSpec
    | CalibrateSpec
    | SampleSpec
    | ScaleSweepSpec
    | RPathSpec
    | GeneralizeSpec
    | SearchSpec
    | ConceptSpec
)
SPECS: dict[str, type[AnySpec]] = {
    "melbo": MelboSpec,
    "random": MelboSpec,
    "dct": DctSpec,
    "adapter": AdapterSpec,
    "chain": ChainSpec,
    "calibrate": CalibrateSpec,
    "generate": SampleSpec,
    "scale_sweep": ScaleSweepSpec,
    "rpath": RPathSpec,
    "generalize": GeneralizeSpec,
    "search": SearchSpec,
    "concept": ConceptSpec,
}


def parse_spec(kind: str, data: dict[str, Any]) -> AnySpec:
    if kind not in SPECS:
        raise EngineError(f"unknown job kind {kind!r}; expected one of {', '.join(SPECS)}")
    return SPECS[kind].from_dict(data)


def check_prompts(lm: LoadedModel, prompts: tuple[str, ...], reserve: int) -> None:
    """Every formatted prompt plus `reserve` new tokens must fit in the model's context."""
    limit = lm.info.context_length
    for i, prompt in enumerate(prompts):
        n = len(lm.tokenizer(format_prompt(lm.tokenizer, prompt), add_special_tokens=False)["input_ids"])
        if n + reserve > limit:
            raise EngineError(
                f"prompt {i + 1} is {n} tokens long; with {reserve} new tokens it exceeds the "
                f"model's context of {limit} tokens"
            )


def check_spec(lm: LoadedModel, kind: str, data: dict[str, Any], *, reserve: int = 0) -> dict[str, Any]:
    """Parse and check `data` for `kind` on the loaded model; return the spec as a dict.

    `reserve`: new tokens that will be generated after the prompts (gallery samples), which must
    fit in the context too.
    """
    spec = parse_spec(kind, data)
    if isinstance(spec, ConceptSpec):  # read over its prompts, nothing generated: the block resolved
        check_prompts(lm, spec.positive + spec.negative, 0)
        return {**spec.to_dict(), "block": spec.source(lm.info.n_blocks)}
    if isinstance(spec, ScaleSweepSpec | SearchSpec):
        spec.check_block(lm.info)
    if isinstance(spec, SampleSpec | ScaleSweepSpec | SearchSpec):
        reserve = max(reserve, spec.max_new_tokens)
    else:
        source, _ = spec.span(lm.info)
        if isinstance(spec, AdapterSpec):
            projection = mlp_out(lm.model, source)
            most = min(projection.in_features, projection.out_features)
            if spec.rank > most:
                raise EngineError(
                    f"rank must be at most {most} (the narrower side of block {source}'s MLP output "
                    f"projection), got {spec.rank}"
                )
    check_prompts(lm, spec.prompts, reserve)
    trained = MelboSpec | DctSpec | AdapterSpec | CalibrateSpec | RPathSpec | GeneralizeSpec
    if isinstance(spec, trained) and spec.positions == "user":
        target_mask(encode_prompts(lm.tokenizer, spec.prompts), "user")  # refuses a changed user turn
    if isinstance(spec, GeneralizeSpec):  # compared on: completed, and read by the objective
        check_prompts(lm, spec.held_out, spec.max_new_tokens)
        if spec.positions == "user":
            target_mask(encode_prompts(lm.tokenizer, spec.held_out), "user")
    return spec.to_dict()
