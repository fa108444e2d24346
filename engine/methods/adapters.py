"""Unsupervised steering adapters: a rank-r LoRA on one block's MLP output projection,

    W' = W + R · B · Aᵀ,   A [d_ff, r] and B [d, r] with every column of unit norm,

so at every token the block's output moves by R · B · (Aᵀ a), a being the projection's input there
(unlike a vector, the change depends on the token). Steering with an adapter at scale s uses
s · R. Generation adds the term with a forward hook on the projection; the weights are never
changed, and a row without an adapter (or at scale 0) gets exactly nothing added.

PEFT mapping: PEFT computes W + (lora_alpha / r) · lora_B · lora_A. We export lora_A = Aᵀ,
lora_B = R · B and lora_alpha = r, so PEFT's scale alpha/r is 1 and it computes exactly
W + R · B · Aᵀ. (The published adapter notebook used lora_alpha = 0.35 with r = 512, an
effective scale of 6.8e-4 on its own normalization.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import EngineError
from engine.models import get_blocks

# Where each architecture keeps its MLP output projection, relative to a block.
MLP_OUT_PATHS = ("mlp.down_proj", "mlp.dense_4h_to_h", "mlp.fc2")
# Norms between the MLP output and the residual add: an adapter there is not a change of the block's
# output alone, so training on the block output would not match generation.
POST_MLP_NORMS = ("post_feedforward_layernorm",)


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no plain truth value to compare by
class Adapter:
    """One steering adapter: W' = W + scale · R · B · Aᵀ on `block`'s MLP output projection."""

    block: int
    down: Tensor  # A [d_ff, r]: unit input directions (what the projection reads)
    up: Tensor  # B [d, r]: unit output directions (what the block's output gains)
    radius: float  # R
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.down.dim() != 2 or self.up.dim() != 2 or self.down.shape[1] != self.up.shape[1]:
            raise EngineError(
                f"an adapter needs A [d_ff, r] and B [d, r] of one rank, got {tuple(self.down.shape)} "
                f"and {tuple(self.up.shape)}"
            )
        for t in (self.down, self.up):
            if not bool(torch.isfinite(t).all()):
                raise EngineError("an adapter contains NaN or infinite values")
        if not isinstance(self.scale, int | float) or not torch.isfinite(torch.tensor(float(self.scale))):
            raise EngineError(f"adapter scale must be a finite number, got {self.scale}")

    @property
    def rank(self) -> int:
        return int(self.down.shape[1])

    @property
    def coefficient(self) -> float:
        return float(self.scale) * float(self.radius)

    def scaled(self, scale: float) -> Adapter:
        return Adapter(self.block, self.down, self.up, self.radius, scale)


def mlp_out(model: nn.Module, block: int) -> nn.Linear:
    """The MLP output projection of a block (a Linear layer), refused where an adapter cannot live."""
    blocks = get_blocks(model)
    if not 0 <= block < len(blocks):
        raise EngineError(f"block {block} is out of range: the model has blocks 0..{len(blocks) - 1}")
    layer = blocks[block]
    if any(hasattr(layer, name) for name in POST_MLP_NORMS):
        raise EngineError(
            f"{type(layer).__name__} normalizes its MLP output before the residual add; steering "
            "adapters need a model whose MLP output is added to the residual stream as it is"
        )
    for path in MLP_OUT_PATHS:
        node: Any = layer
        for attr in path.split("."):
            node = getattr(node, attr, None)
        if isinstance(node, nn.Linear):
            return node
    raise EngineError(f"cannot find a Linear MLP output projection in {type(layer).__name__}")


def mlp_out_path(model: nn.Module, block: int) -> str:
    """The module path of a block's MLP output projection inside the model (PEFT's key)."""
    target = mlp_out(model, block)
    for name, module in model.named_modules():
        if module is target:
            return name
    raise EngineError("the MLP output projection is not a submodule of the model")


def pack(down: Tensor, up: Tensor) -> Tensor:
    """A and B as one flat float32 tensor (A's rows, then B's): what is stored."""
    return torch.cat([down.detach().float().cpu().reshape(-1), up.detach().float().cpu().reshape(-1)])


def unpack(values: Tensor, width: int, rank: int) -> tuple[Tensor, Tensor]:
    """(A [d_ff, r], B [d, r]) from `pack`'s flat tensor, given the model's width and the rank."""
    total = values.numel()
    if rank < 1 or total % rank or total // rank <= width:
        raise EngineError(f"{total} values are not a rank-{rank} adapter of width {width}")
    d_ff = total // rank - width
    flat = values.float().reshape(-1)
    return flat[: d_ff * rank].view(d_ff, rank), flat[d_ff * rank :].view(width, rank)


def random_factors(gen: torch.Generator, rows: int, rank: int) -> Tensor:
    """A random [rows, r] matrix with unit columns."""
    return F.normalize(torch.randn(rows, rank, generator=gen), dim=0)


class Added:
    """Forward hook on an MLP output projection: row b's output gains (x_b A_b) B_bᵀ ([B, T, d])."""

    def __init__(self, down: Tensor, up: Tensor) -> None:
        self.down, self.up = down, up  # [B, d_ff, r], [B, d, r] with the coefficient folded into up

    def select(self, keep: Tensor) -> None:
        self.down, self.up = self.down[keep], self.up[keep]

    def __call__(self, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        x = args[0]  # [B, T, d_ff]
        if self.down.shape[0] != x.shape[0]:
            raise EngineError(f"adapters have {self.down.shape[0]} rows but the batch has {x.shape[0]}")
        down = self.down.to(device=x.device, dtype=x.dtype)
        up = self.up.to(device=x.device, dtype=x.dtype)
        return output + torch.einsum("btr,bdr->btd", torch.einsum("btf,bfr->btr", x, down), up)


def stack_rows(adapters: Sequence[Adapter | None], block: int) -> tuple[Tensor, Tensor] | None:
    """Per-row factors at `block` ([B, d_ff, r_max], [B, d, r_max], coefficient folded into B, zero
    where a row has none), or None when no row adapts this block at a non-zero scale."""
    live = [a for a in adapters if a is not None and a.block == block and a.coefficient != 0]
    if not live:
        return None
    rank = max(a.rank for a in live)
    d_ff, width = live[0].down.shape[0], live[0].up.shape[0]
    down = torch.zeros(len(adapters), d_ff, rank)
    up = torch.zeros(len(adapters), width, rank)
    for i, a in enumerate(adapters):
        if a is not None and a.block == block and a.coefficient != 0:
            down[i, :, : a.rank] = a.down.float()
            up[i, :, : a.rank] = a.coefficient * a.up.float()
    return down, up


def join_rows(
    old: tuple[Tensor, Tensor] | None, n_old: int, new: tuple[Tensor, Tensor] | None, n_new: int
) -> tuple[Tensor, Tensor]:
    """The rows of two batches' factors at one block (`stack_rows`'s shape), one after the other;
    the lower rank is padded with zero columns, and a batch with none gets zero rows."""
    some = old if old is not None else new
    assert some is not None
    d_ff, width = some[0].shape[1], some[1].shape[1]
    rank = max(f[0].shape[2] for f in (old, new) if f is not None)

    def padded(f: tuple[Tensor, Tensor] | None, n: int) -> tuple[Tensor, Tensor]:
        if f is None:
            return some[0].new_zeros(n, d_ff, rank), some[1].new_zeros(n, width, rank)
        pad = rank - f[0].shape[2]
        return torch.nn.functional.pad(f[0], (0, pad)), torch.nn.functional.pad(f[1], (0, pad))

    a, b = padded(old, n_old), padded(new, n_new)
    return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])


@contextmanager
def adapting(model: nn.Module, rows: dict[int, tuple[Tensor, Tensor]]) -> Iterator[dict[int, Added]]:
    """Hooks adding each block's per-row factors to its MLP output projection; always removed."""
    hooks: dict[int, Added] = {}
    with ExitStack() as stack:
        for block, (down, up) in rows.items():
            hook = hooks[block] = Added(down, up)
            handle = mlp_out(model, block).register_forward_hook(hook)
            stack.callback(handle.remove)
        yield hooks


@contextmanager
def adapt(model: nn.Module, adapter: Adapter | None, batch: int = 1) -> Iterator[None]:
    """Every forward within the block runs with `adapter` on all `batch` rows (None: unchanged)."""
    rows = stack_rows([adapter] * batch, adapter.block) if adapter is not None else None
    if rows is None or adapter is None:
        yield
        return
    with adapting(model, {adapter.block: rows}):
        yield


def export_peft(
    path: str | Path,
    model: nn.Module,
    adapter: Adapter,
    *,
    base_model: str = "",
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a PEFT LoRA adapter folder (adapter_model.safetensors, adapter_config.json) that
    `peft.PeftModel.from_pretrained(model, path)` loads and that computes W + R·B·Aᵀ."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    module = mlp_out_path(model, adapter.block)
    key = f"base_model.model.{module}"
    tensors = {
        f"{key}.lora_A.weight": adapter.down.float().T.contiguous(),  # [r, d_ff]
        f"{key}.lora_B.weight": (adapter.coefficient * adapter.up.float()).contiguous(),  # [d, r]
    }
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": adapter.rank,
        "lora_alpha": adapter.rank,  # PEFT's scale alpha / r = 1: R lives in lora_B
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": [module],
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
    }
    safetensors.torch.save_file(
        tensors,
        str(folder / "adapter_model.safetensors"),
        metadata={"format": "pt", "steerscope": json.dumps(meta or {})},
    )
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
