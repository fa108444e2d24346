"""Run only the blocks between a source and a target block, on cached activations.

Activations up to the source block do not depend on a steering vector added there, and nothing
after the target block is read: caching the first part and skipping the second (LM head
included) is where the fast MELBO and chain modes save most of their time.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from engine.errors import EngineError
from engine.models import get_blocks
from engine.prompts import PromptBatch
from engine.steer.pauses import between, pause


def check_span(n_blocks: int, source: int, target: int) -> None:
    """Source is a block index; target indexes hidden_states (the output of block target-1)."""
    if not 0 <= source < n_blocks:
        raise EngineError(f"source block {source} is out of range: the model has blocks 0..{n_blocks - 1}")
    if not source + 2 <= target <= n_blocks - 1:
        raise EngineError(
            f"target {target} must lie between source + 2 = {source + 2} and {n_blocks - 1} "
            "(it reads the output of block target-1, at least one block after the source)"
        )


def _repeat_rows(value: Any, rows: int, times: int) -> Any:
    """Tile every per-row tensor argument (dim 0 == rows) `times` over, vector-major."""
    if isinstance(value, Tensor):
        if value.dim() >= 2 and value.shape[0] == rows and times > 1:
            return value.repeat(times, *([1] * (value.dim() - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_repeat_rows(v, rows, times) for v in value)
    if isinstance(value, list):
        return [_repeat_rows(v, rows, times) for v in value]
    if isinstance(value, dict):
        return {k: _repeat_rows(v, rows, times) for k, v in value.items()}
    return value


def _widen(value: Any) -> Any:
    """Every half-precision tensor in a block's arguments as float32 (masks, rotary tables)."""
    if isinstance(value, Tensor):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, tuple):
        return tuple(_widen(v) for v in value)
    if isinstance(value, list):
        return [_widen(v) for v in value]
    if isinstance(value, dict):
        return {k: _widen(v) for k, v in value.items()}
    return value


class Segment:
    """Blocks source+1 .. target-1 of `model` on a fixed prompt batch.

    Rows of a run are vector-major: row k * P + i is vector k on prompt i.
    """

    def __init__(
        self,
        model: nn.Module,
        batch: PromptBatch,
        source: int,
        target: int,
        *,
        input_of: nn.Module | None = None,
        float32: bool = False,
    ) -> None:
        """`input_of`: a module whose input on the prompts is kept too (`self.kept_input`).

        `float32`: run the segment on float32 copies of its blocks when the model is in half
        precision (the cached activations are widened too). It costs those blocks' weights again
        at twice their size; an optimizer that needs a smooth loss (L-BFGS's line search) pays it,
        as bfloat16 rounding of a residual stream hundreds wide stalls it far from the optimum."""
        blocks = get_blocks(model)
        check_span(len(blocks), source, target)
        self.model, self.batch, self.source, self.target = model, batch, source, target
        self.blocks = [blocks[i] for i in range(source + 1, target)]
        self._calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._expanded: dict[int, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}
        captured: dict[str, Tensor] = {}

        def keep_source(module: nn.Module, args: Any, output: Any) -> None:
            captured["source"] = (output[0] if isinstance(output, tuple) else output).detach()

        def keep_target(module: nn.Module, args: Any, output: Any) -> None:
            captured["target"] = (output[0] if isinstance(output, tuple) else output).detach()

        def keep_call(module: nn.Module, args: Any, kwargs: Any) -> None:
            # Everything a block gets besides its hidden states: masks, positions, rotary tables.
            self._calls.append((tuple(args[1:]), dict(kwargs)))

        def keep_input(module: nn.Module, args: Any) -> None:
            captured["input"] = args[0].detach()

        handles = [blocks[source].register_forward_hook(keep_source)]
        if input_of is not None:
            handles.append(input_of.register_forward_pre_hook(keep_input))
        handles += [b.register_forward_pre_hook(keep_call, with_kwargs=True) for b in self.blocks]
        handles.append(blocks[target - 1].register_forward_hook(keep_target))
        try:
            with torch.no_grad():
                self.model(**batch.model_inputs(), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        self.h_source: Tensor = captured["source"]  # [P, T, d] output of the source block
        self.z0: Tensor = captured["target"]  # [P, T, d] unsteered hidden_states[target]
        if float32 and self.h_source.dtype != torch.float32:
            self.blocks = [copy.deepcopy(b).float() for b in self.blocks]
            self._calls = [(_widen(a), _widen(k)) for a, k in self._calls]
            self.h_source, self.z0 = self.h_source.float(), self.z0.float()
        self.kept_input: Tensor | None = captured.get("input")  # [P, T, *] input of `input_of`

    @property
    def prompts(self) -> int:
        return self.batch.size

    def _calls_for(self, times: int) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        if times not in self._expanded:
            self._expanded = {
                times: [
                    (_repeat_rows(a, self.prompts, times), _repeat_rows(k, self.prompts, times))
                    for a, k in self._calls
                ]
            }
        return self._expanded[times]

    def run(self, delta: Tensor) -> Tensor:
        """hidden_states[target] with delta added at the source: [K * P, T, d].

        delta is [K, d] (one vector at every position) or [K, P, T, d] (a change per position).
        """
        k = delta.shape[0]
        hidden = self.h_source.repeat(k, 1, 1)  # [K*P, T, d]
        if delta.dim() == 4:
            hidden = hidden + delta.to(hidden.dtype).reshape(hidden.shape)
        else:
            hidden = hidden + delta.to(hidden.dtype).repeat_interleave(self.prompts, dim=0)[:, None, :]
        for block, (args, kwargs) in zip(self.blocks, self._calls_for(k), strict=True):
            pause()  # other work may run here (engine/steer/pauses.py), forward and backward
            between(hidden)
            out = block(hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def baseline(self, k: int) -> Tensor:
        """The unsteered target activations tiled for K vectors: [K * P, T, d]."""
        return self.z0.repeat(k, 1, 1)
