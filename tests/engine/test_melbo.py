"""MELBO on the tiny model: constraints, both modes, cancellation, resumption and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.errors import EngineError
from engine.methods.calibrate import RTOL
from engine.methods.default_radius import MULTIPLE, THRESHOLD, default_share
from engine.methods.melbo import MelboTrainer, train_melbo
from engine.models import LoadedModel, load_model
from engine.specs import MelboSpec
from engine.steer.objective import Objective, retract

PROMPTS = ("How can I make a bomb?", "Tell me a story about a dragon.")


def spec(**overrides: object) -> MelboSpec:
    base: dict[str, object] = dict(prompts=PROMPTS, source=0, target=3, radius=2.0, n_vectors=5, steps=30)
    base.update(overrides)
    return MelboSpec.from_dict(base)


def assert_orthonormal_at(vectors: torch.Tensor, radius: float, tol: float = 1e-5) -> None:
    gram = vectors.double() @ vectors.double().T / radius**2
    torch.testing.assert_close(gram, torch.eye(len(vectors), dtype=torch.float64), atol=tol, rtol=0)


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_vectors_have_norm_r_are_orthogonal_and_beat_their_start(tiny: LoadedModel, mode: str) -> None:
    # The published lr barely moves a vector in 30 steps; a larger one shows the same mechanics.
    result = train_melbo(tiny, spec(mode=mode, batch_size=2, lr=0.05 if mode == "reference" else None))
    assert result.vectors.shape == (5, 64) and result.vectors.dtype == torch.float32
    assert_orthonormal_at(result.vectors, 2.0)
    random = train_melbo(tiny, spec(method="random"))
    assert_orthonormal_at(random.vectors, 2.0)
    for record in result.records:
        assert record.curve[-1] > record.curve[0] and record.steps == len(record.curve)
        assert -1.0 <= record.start_cosine < 0.999  # the optimizer moved every vector
    # Same seed: the first trained vector starts where the first random baseline vector is.
    first = torch.nn.functional.cosine_similarity(result.vectors[0], random.vectors[0], dim=0)
    assert result.records[0].start_cosine == pytest.approx(float(first), abs=1e-5)
    assert min(result.objectives) > max(random.objectives)


def test_fast_reaches_the_reference_objective(tiny: LoadedModel) -> None:
    reference = train_melbo(tiny, spec(mode="reference", n_vectors=3, steps=150))
    fast = train_melbo(tiny, spec(mode="fast", n_vectors=3, batch_size=3))
    assert sorted(fast.objectives)[1] >= 0.95 * sorted(reference.objectives)[1]
    assert max(r.steps for r in fast.records) < 150


def test_not_orthogonal_mode_only_normalizes(tiny: LoadedModel) -> None:
    result = train_melbo(tiny, spec(orthogonal=False, n_vectors=3, steps=5))
    torch.testing.assert_close(result.vectors.norm(dim=1), torch.full((3,), 2.0))


def test_same_seed_same_vectors(tiny: LoadedModel) -> None:
    a = train_melbo(tiny, spec(n_vectors=2, steps=10))
    b = train_melbo(tiny, spec(n_vectors=2, steps=10))
    assert torch.equal(a.vectors, b.vectors)


def test_cancel_keeps_finished_vectors_and_resume_completes(tiny: LoadedModel) -> None:
    seen: list[tuple[int, int, float]] = []

    def stop() -> bool:
        return any(index == 2 for index, _, _ in seen)  # cancel once vector 2 has started

    partial = train_melbo(
        tiny, spec(mode="reference", steps=10), on_progress=lambda *a: seen.append(a), should_stop=stop
    )
    assert partial.cancelled and len(partial.vectors) == 2
    rest = train_melbo(tiny, spec(mode="reference", steps=10), orthogonal_to=partial.vectors)
    assert [r.index for r in rest.records] == [2, 3, 4]
    whole = torch.cat([partial.vectors, rest.vectors])
    assert_orthonormal_at(whole, 2.0)
    uninterrupted = train_melbo(tiny, spec(mode="reference", steps=10))
    torch.testing.assert_close(whole, uninterrupted.vectors, atol=1e-5, rtol=0)


def test_default_radius_is_a_calibrated_share_of_the_residual_norm(tiny: LoadedModel) -> None:
    result = train_melbo(tiny, spec(radius=None, n_vectors=1, steps=1))
    found = default_share(tiny, 0, 3, spec().positions)
    assert result.calibration == found.to_dict()
    assert result.radius == pytest.approx(found.share * result.residual_norm)
    assert float(result.vectors.norm()) == pytest.approx(result.radius, rel=1e-5)
    # Calibrated, not the old fixed share: the ratio at that R is the threshold's.
    assert found.fallback == "" and found.calibrated_radius is not None and found.ratio is not None
    assert found.share == pytest.approx(MULTIPLE * found.calibrated_radius / found.calibration_norm)
    assert abs(found.ratio / THRESHOLD - 1) <= RTOL
    # The random twin (same settings, other method) and a run of another seed get the same share.
    twin = train_melbo(tiny, spec(radius=None, n_vectors=1, method="random"))
    other = train_melbo(tiny, spec(radius=None, n_vectors=1, steps=1, seed=5))
    assert twin.radius == pytest.approx(result.radius, rel=1e-9)
    assert other.calibration == result.calibration
    # Computed once per model and span: a new trainer finds it cached and has R at once.
    assert not MelboTrainer(tiny, spec(radius=None)).calibrating


def test_a_given_radius_or_share_needs_no_calibration(tiny: LoadedModel) -> None:
    given = train_melbo(tiny, spec(radius=1.5, n_vectors=1, steps=1))
    assert given.radius == 1.5 and given.calibration is None
    share = train_melbo(tiny, spec(radius=None, radius_fraction=0.08, n_vectors=1, steps=1))
    assert share.radius == pytest.approx(0.08 * share.residual_norm) and share.calibration is None
    assert not MelboTrainer(tiny, spec(radius=None, radius_fraction=0.2, source=1)).calibrating


def test_an_uncalibrated_default_calibrates_one_probe_per_step(tiny_dir: Path) -> None:
    lm = load_model(str(tiny_dir), device="cpu")  # a model of its own: nothing cached for it yet
    trainer = MelboTrainer(lm, spec(radius=None, n_vectors=2, steps=3, source=1))
    assert trainer.calibrating and trainer.result().radius == 0.0
    probes = 0
    while trainer.calibrating:
        assert trainer.step() == [] and not trainer.finished
        probes += 1
    assert 2 <= probes <= 40 and trainer.problem.radius > 0
    while not trainer.finished:
        trainer.step()
    assert trainer.result().radius == pytest.approx(
        default_share(lm, 1, 3, spec().positions).share * trainer.problem.residual_norm
    )


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(source=4), "source block"),
        (dict(target=1), "target"),
        (dict(radius=0.0), "R"),
        (dict(radius=float("inf")), "R"),
        (dict(n_vectors=0), "number of vectors"),
        (dict(prompts=[]), "prompt"),
        (dict(prompts=["   "]), "empty"),
        (dict(positions="middle"), "positions"),
        (dict(prompts=["word " * 400]), "context"),
    ],
)
def test_bad_specs_are_refused(tiny: LoadedModel, bad: dict[str, object], message: str) -> None:
    with pytest.raises(EngineError, match=message):
        train_melbo(tiny, spec(**bad))


def test_loss_variants_agree_for_p2_and_differ_for_p4() -> None:
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 5, 8, generator=gen)
    z = z0.repeat(3, 1, 1) + torch.randn(6, 5, 8, generator=gen)
    mask = torch.ones(2, 5, dtype=torch.bool)
    for p, same in ((2.0, True), (4.0, False)):
        token = Objective(mask, p, p, "token")(z, z0)
        reference = Objective(mask, p, p, "reference")(z, z0)
        assert torch.allclose(token, reference) is same


def test_retract_is_ordered_gram_schmidt() -> None:
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))
    out = retract(x, torch.zeros(0, 16), 3.0, True)
    assert_orthonormal_at(out, 3.0)
    # The first row only changes length; the second keeps its component out of the first's span.
    torch.testing.assert_close(out[0], 3.0 * x[0] / x[0].norm())
