"""Vectors cross the process boundary as float32 bytes (little-endian, C order); a steering adapter
as a dict of its block, rank, R and packed factors (engine.methods.adapters.pack), with the model's width."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from engine.methods.adapters import Adapter, pack, unpack


def to_bytes(vector: Tensor) -> bytes:
    return vector.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


def from_bytes(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.float32)


def adapter_to(adapter: Adapter) -> dict[str, Any]:
    """An adapter as the server stores it (its scale is the caller's, not stored)."""
    return {
        "block": adapter.block,
        "rank": adapter.rank,
        "radius": adapter.radius,
        "width": int(adapter.up.shape[0]),
        "factors": to_bytes(pack(adapter.down, adapter.up)),
    }


def adapter_from(payload: dict[str, Any], scale: float = 1.0) -> Adapter:
    """The engine adapter of a payload (`adapter_to`'s keys; a "scale" in it wins over `scale`)."""
    down, up = unpack(from_bytes(payload["factors"]), int(payload["width"]), int(payload["rank"]))
    return Adapter(
        int(payload["block"]), down, up, float(payload["radius"]), float(payload.get("scale", scale))
    )
