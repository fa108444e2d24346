"""Vector geometry the pages need, in numpy from the stored float32 bytes (no torch in the app)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

Matrix = NDArray[np.float64]


def stack(values: Sequence[bytes]) -> Matrix:
    """[N, d] float64 from float32 little-endian bytes."""
    if not values:
        return np.zeros((0, 0))
    return np.stack([np.frombuffer(v, dtype="<f4") for v in values]).astype(np.float64)


def unit_rows(m: Matrix) -> Matrix:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms > 0, norms, 1.0)


def cosine_matrix(m: Matrix) -> Matrix:
    u = unit_rows(m)
    return u @ u.T


def nearest(query: bytes, candidates: Sequence[bytes], k: int) -> list[tuple[int, float]]:
    """(position in candidates, cosine) of the k most similar candidates, most similar first."""
    if not candidates:
        return []
    sims = unit_rows(stack(candidates)) @ unit_rows(stack([query]))[0]
    order = np.argsort(-sims)[:k]
    return [(int(i), float(sims[i])) for i in order]


def pca_2d(m: Matrix) -> tuple[Matrix, list[float]]:
    """[N, 2] coordinates on the two directions of largest spread (zeros when N < 2), and the share
    of the spread each direction carries."""
    if m.shape[0] < 2:
        return np.zeros((m.shape[0], 2)), [0.0, 0.0]
    centered = m - m.mean(axis=0, keepdims=True)
    _, singular, vt = np.linalg.svd(centered, full_matrices=False)
    coords = centered @ vt[:2].T
    spread = singular**2
    total = float(spread.sum())
    shares = [float(s / total) if total > 0 else 0.0 for s in spread[:2]]
    shares += [0.0] * (2 - len(shares))
    coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    for k, share in enumerate(shares):
        if share < 1e-9:  # no spread along it: what is left is rounding noise (2 vectors, 1 point)
            coords[:, k] = 0.0
    return coords, shares


def composition(m: Matrix, n: int) -> Matrix:
    """The chain composition test: the mean of the first n vectors times √n (docs/methods.md)."""
    return np.asarray(m[:n].mean(axis=0) * np.sqrt(n))


def to_bytes(v: Matrix) -> bytes:
    return np.asarray(v, dtype="<f4").tobytes()
