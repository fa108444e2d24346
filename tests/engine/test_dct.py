"""DCT on the tiny model and on constructed responses: orthonormal inputs after every QR step, the
one-factor case against MELBO, α finding a planted factor, calibration, determinism, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import engine.methods.dct as dct
from engine.errors import EngineError
from engine.methods.dct import DctTrainer, Transcoder, train_dct
from engine.methods.melbo import train_melbo
from engine.models import LoadedModel
from engine.progress import Progress
from engine.specs import DctSpec, MelboSpec

PROMPTS = ("How can I make a bomb?", "Tell me a story about a dragon.")


def spec(**overrides: object) -> DctSpec:
    base: dict[str, object] = dict(prompts=PROMPTS, source=0, target=3, radius=1.0, n_vectors=6, batch_size=4)
    base.update(overrides)
    return DctSpec.from_dict(base)


def test_input_directions_are_orthonormal_after_every_qr_step(
    tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Tensor] = []
    qr = dct.orthonormal_rows

    def recorded(v: Tensor) -> Tensor:
        out = qr(v)
        seen.append(out.clone())
        return out

    monkeypatch.setattr(dct, "orthonormal_rows", recorded)
    trainer = DctTrainer(tiny, spec(steps=4))
    while not trainer.finished:
        trainer.step()
        t = trainer.transcoder
        assert t is not None
        if t.phase == "iterations" and t.iteration < 3:  # mid-iteration: V is still the QR output
            torch.testing.assert_close(t.V, seen[-1])
    assert len(seen) == 4  # one QR per iteration (the Jacobian start's completion did not need one)
    for v in seen:
        torch.testing.assert_close(
            v.double() @ v.double().T, torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0
        )
    result = trainer.result()
    assert result.vectors.shape == (6, 64)
    torch.testing.assert_close(result.vectors.norm(dim=1), torch.full((6,), 1.0))
    scores = [r.score for r in result.records]
    assert scores == sorted(scores, reverse=True) and [r.index for r in result.records] == list(range(6))
    assert all(r.steps == 4 and len(r.curve) == 4 for r in result.records)


def test_one_factor_matches_a_converged_melbo_vector(tiny: LoadedModel) -> None:
    # One prompt, one target position and p = q = 2: MELBO maximizes ‖Δ(θ)‖, the quantity one DCT
    # factor's iteration climbs. Near-linear R, where the maximum is one direction.
    common: dict[str, object] = dict(
        prompts=PROMPTS[:1], source=0, target=3, radius=0.02, positions="last:1", n_vectors=1
    )
    top = train_dct(tiny, DctSpec.from_dict(common))
    melbo = [train_melbo(tiny, MelboSpec.from_dict({**common, "p": 2.0, "seed": s})) for s in range(3)]
    best = max(melbo, key=lambda r: r.objectives[0])
    cosine = float(F.cosine_similarity(best.vectors[0], top.vectors[0], dim=0))
    assert cosine >= 0.9
    assert top.records[0].objective >= 0.98 * best.objectives[0]


class PlantedExponential:
    """Δ(θ) = Σ_ℓ a_ℓ u_ℓ (exp(⟨v_ℓ, θ⟩ / R) − 1): the model DCT's ranking assumes, with known factors."""

    def __init__(self, strengths: list[float], width: int = 24, radius: float = 1.0) -> None:
        gen = torch.Generator().manual_seed(3)
        q, _ = torch.linalg.qr(torch.randn(width, width, generator=gen))
        self.v = q[: len(strengths)]  # orthonormal inputs
        self.u = F.normalize(torch.randn(len(strengths), width, generator=gen), dim=1)
        self.a = torch.tensor(strengths)
        self.radius = radius
        self.width = self.out_width = width

    def __call__(self, theta: Tensor) -> Tensor:
        gains = torch.expm1(theta @ self.v.T / self.radius) * self.a  # [K, m]
        return (gains @ self.u)[:, None, :]  # one "prompt"


def test_alpha_ranks_a_planted_strong_direction_first() -> None:
    response = PlantedExponential([1.0, 0.4, 6.0, 0.7, 0.5])
    t = Transcoder(response, n_factors=5, radius=1.0, projection=8, batch_size=2)
    while not t.finished:
        t.step()
    top = int(t.order[0])
    assert abs(float(F.cosine_similarity(t.V[top], response.v[2], dim=0))) > 0.9
    assert float(t.alpha[top]) == pytest.approx(6.0, rel=0.1)
    assert t.units_done == t.units_total


def test_calibrated_radius_and_determinism(tiny: LoadedModel) -> None:
    seen: list[tuple[str, Progress]] = []
    a = train_dct(tiny, spec(radius=None, n_vectors=3, steps=2), on_progress=lambda *p: seen.append(p))
    phases = [phase for phase, _ in seen]
    assert phases[0] == "calibration" and phases[-1] == "ranking" and "iterations" in phases
    fractions = [p.fraction for _, p in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0 and fractions[-1] == 1
    assert seen[-1][1].steps_left == 0 and seen[-1][1].done == 3
    assert a.calibration is not None and a.radius == pytest.approx(a.calibration["radius"])
    assert abs(a.calibration["ratio"] / 0.5 - 1) <= 0.02
    torch.testing.assert_close(a.vectors.norm(dim=1), torch.full((3,), a.radius))
    b = train_dct(tiny, spec(radius=None, n_vectors=3, steps=2))
    assert torch.equal(a.vectors, b.vectors)
    assert all(math.isfinite(r.alpha) for r in a.records)


def test_damped_updates_keep_climbing(tiny: LoadedModel) -> None:
    # β < 1 keeps part of the last iterate: on this model the effect then rises at every iteration.
    result = train_dct(tiny, spec(n_vectors=1, beta=0.5, steps=8, radius=0.1, prompts=PROMPTS[:1]))
    curve = result.records[0].curve
    assert all(b >= a - 1e-6 for a, b in itertools.pairwise(curve))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"n_vectors": 65}, "at most the model's width"),
        ({"beta": 0.0}, "beta must be in (0, 1]"),
        ({"steps": 0}, "steps (DCT iterations)"),
        ({"positions": "first"}, "positions must be"),
    ],
)
def test_bad_specs_are_refused(tiny: LoadedModel, bad: dict[str, object], message: str) -> None:
    with pytest.raises(EngineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DctTrainer(tiny, spec(**bad))
