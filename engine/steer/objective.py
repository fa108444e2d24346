"""The MELBO objective and its per-vector diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Objective:
    """Σ_i ( Σ_{t∈I} ‖Z_it(θ) − Z_it(0)‖^p )^(1/q), read on the masked target positions."""

    mask: Tensor  # [P, T] bool: target positions
    p: float = 2.0
    q: float = 2.0
    loss: str = "token"  # "token": per-position norms; "reference": norms over positions per dimension
    normalize: bool = False  # divide each position's change by its unsteered norm

    def changes(self, z: Tensor, z0: Tensor) -> Tensor:
        """Masked change at the target: [K, P, T, d] from z [K*P, T, d] and z0 [P, T, d]."""
        prompts = z0.shape[0]
        delta = z.float().view(-1, prompts, *z.shape[1:]) - z0.float()[None]
        if self.normalize:
            # Against massive-activation gaming: a token whose norm explodes counts relative to itself.
            delta = delta / z0.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)[None]
        return delta * self.mask[None, :, :, None].to(delta.dtype)

    def __call__(self, z: Tensor, z0: Tensor) -> Tensor:
        """Objective per vector: [K]."""
        delta = self.changes(z, z0)  # [K, P, T, d]
        if self.loss == "reference":
            per_prompt = delta.norm(dim=2).pow(self.p).sum(dim=-1)  # [K, P]: norm over positions
        else:
            per_prompt = delta.norm(dim=-1).pow(self.p).sum(dim=-1)  # [K, P]: norm per position
        return per_prompt.pow(1.0 / self.q).sum(dim=-1)

    def top_position_share(self, z: Tensor, z0: Tensor) -> Tensor:
        """Share of Σ_t ‖Δ_t‖^p carried by the single largest position, per vector: [K]."""
        with torch.no_grad():
            per_token = self.changes(z, z0).norm(dim=-1).pow(self.p)  # [K, P, T]
            flat = per_token.flatten(1)
            return flat.max(dim=1).values / flat.sum(dim=1).clamp_min(1e-30)


def orthonormal_basis(vectors: Tensor) -> Tensor:
    """Orthonormal rows spanning `vectors` [F, d], in float64 (empty input gives [0, d])."""
    if vectors.shape[0] == 0:
        return vectors.double()
    q, r = torch.linalg.qr(vectors.double().T)  # q: [d, F]
    keep = r.diagonal().abs() > 1e-12 * r.diagonal().abs().max().clamp_min(1e-300)
    return q.T[keep]


def project_out(x: Tensor, basis: Tensor) -> Tensor:
    """Remove from each row of x [K, d] its components along orthonormal rows of basis [F, d]."""
    if basis.shape[0] == 0:
        return x
    b = basis.to(x.dtype)
    return x - (x @ b.T) @ b


def retract(theta: Tensor, fixed: Tensor, radius: float, orthogonal: bool) -> Tensor:
    """Back onto the constraint set: each row orthogonal to `fixed` and to earlier rows, norm R.

    Ordered Gram-Schmidt in float64, so row k only ever yields to rows before it: the batch then
    finds the same kind of sequence as training the vectors one after another.
    """
    rows = theta.double()
    if orthogonal:
        basis = orthonormal_basis(fixed) if fixed.shape[0] else fixed.double()
        out = []
        for k in range(rows.shape[0]):
            v = project_out(rows[k : k + 1], basis)
            v = project_out(v, basis)  # twice is enough for float64 exactness
            v = v / v.norm().clamp_min(1e-300)
            out.append(v)
            basis = torch.cat([basis, v])
        rows = torch.cat(out)
    else:
        rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return (rows * radius).to(theta.dtype)
