"""Keeping a chain orthogonal: a float64 basis of what is fixed, and an ordered, differentiable
Gram-Schmidt for the vectors still being trained. Two passes everywhere: one leaves ~1e-8."""

from __future__ import annotations

import torch
from torch import Tensor


class Basis:
    """Orthonormal float64 rows spanning θ₀ and the finished chain."""

    def __init__(self, width: int, device: torch.device) -> None:
        self.q = torch.zeros(0, width, dtype=torch.float64, device=device)  # [m, d]

    def project(self, x: Tensor) -> Tensor:
        """x [K, d] minus its part in the span, in float64; twice, as one pass leaves ~1e-8."""
        y = x.to(self.q.device, torch.float64)
        for _ in range(2):
            y = y - (y @ self.q.T) @ self.q
        return y

    def add(self, vectors: Tensor) -> None:
        """Extend the span by the rows of vectors [K, d]; rows already in it add nothing."""
        for row in vectors.to(self.q.device, torch.float64):
            rest = self.project(row[None])[0]
            if float(rest.norm()) > 1e-9 * float(row.norm()):
                self.q = torch.cat([self.q, (rest / rest.norm())[None]])


def orthogonalize(x: Tensor, basis: Basis) -> Tensor:
    """Rows of x [K, d] off the basis and off the rows before them (ordered Gram-Schmidt).

    Differentiable, in float64, returned in x's dtype. A row left with a negligible share of its
    norm has no direction of its own and becomes 0.
    """
    y = basis.project(x)  # [K, d] float64
    rows: list[Tensor] = []
    units: list[Tensor] = []
    for k in range(y.shape[0]):
        row = y[k]
        for _ in range(2):
            for u in units:
                row = row - (row @ u) * u
        if float(row.detach().norm()) <= 1e-9 * float(x[k].detach().double().norm()):
            row = row * 0.0
        else:
            units.append(row / row.norm())
        rows.append(row)
    return torch.stack(rows).to(x.dtype)


def max_abs_cos(vectors: Tensor) -> float:
    """Largest |cos| between two non-zero rows of vectors [N, d] (0 for fewer than two)."""
    rows = vectors.double()
    norms = rows.norm(dim=1)
    live = rows[norms > 0] / norms[norms > 0, None]
    if live.shape[0] < 2:
        return 0.0
    return float((live @ live.T - torch.eye(live.shape[0], dtype=torch.float64)).abs().max())
