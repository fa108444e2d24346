"""Vectors cross the process boundary as float32 bytes (little-endian, C order)."""

from __future__ import annotations

import torch
from torch import Tensor


def to_bytes(vector: Tensor) -> bytes:
    return vector.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


def from_bytes(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.float32)
