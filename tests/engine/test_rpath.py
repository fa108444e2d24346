"""The R-path on the tiny model: a converged vector trained again from itself at several R."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import EngineError
from engine.methods.melbo import train_melbo
from engine.models import LoadedModel
from engine.refine.rpath import RPath, rpath, rpath_steps
from engine.refine.specs import DEFAULT_MULTIPLES, RPathSpec
from engine.specs import MelboSpec

PROMPTS = ("Tell me a story.", "What is two plus two?")
R = 4.0


@pytest.fixture(scope="module")
def parent(tiny: LoadedModel) -> torch.Tensor:
    """A converged MELBO vector at norm R."""
    return train_melbo(tiny, MelboSpec(prompts=PROMPTS, n_vectors=1, radius=R)).vectors[0]


@pytest.fixture(scope="module")
def path(tiny: LoadedModel, parent: torch.Tensor) -> RPath:
    return rpath(tiny, parent, RPathSpec(prompts=PROMPTS, source=1, multiples=(2.0, 0.5, 1.0, 1.5)))


def test_each_point_is_at_its_multiple_of_r(path: RPath) -> None:
    assert [p.multiple for p in path.points] == [0.5, 1.0, 1.5, 2.0]  # in order of R
    assert path.radius == pytest.approx(R, rel=1e-5)  # the vector's own norm
    assert path.vectors.norm(dim=1).tolist() == pytest.approx([2.0, 4.0, 6.0, 8.0], rel=1e-4)
    assert [p.radius for p in path.points] == pytest.approx([2.0, 4.0, 6.0, 8.0], rel=1e-5)
    assert (path.source, path.target) == (1, 3)


def test_cosines_read_the_path(path: RPath, parent: torch.Tensor) -> None:
    units = path.vectors / path.vectors.norm(dim=1, keepdim=True)
    for i, point in enumerate(path.points):
        assert -1.0 <= point.cos_parent <= 1.0
        assert point.cos_parent == pytest.approx(float(units[i] @ parent / parent.norm()), abs=1e-5)
        if i == 0:
            assert point.cos_previous is None
        else:
            assert point.cos_previous is not None and -1.0 <= point.cos_previous <= 1.0
            assert point.cos_previous == pytest.approx(float(units[i] @ units[i - 1]), abs=1e-5)
    at_r = path.points[1]
    assert at_r.multiple == 1.0 and at_r.cos_parent >= 0.95  # a warm start stays near an optimum
    assert at_r.objective >= at_r.start_objective  # and training does not lose what it had


def test_the_fastest_changing_coordinates(path: RPath) -> None:
    units = path.vectors / path.vectors.norm(dim=1, keepdim=True)
    change = units[-1] - units[0]
    picked = [c.index for c in path.coordinates]
    assert len(picked) == len(set(picked)) == 8
    assert picked[0] == int(change.abs().argmax())
    assert [abs(c.change) for c in path.coordinates] == sorted(
        (abs(c.change) for c in path.coordinates), reverse=True
    )
    for c in path.coordinates:
        assert c.values == pytest.approx(units[:, c.index].tolist(), abs=1e-6)
        assert c.change == pytest.approx(float(change[c.index]), abs=1e-6)
        assert c.grows == (abs(c.values[-1]) > abs(c.values[0]))
    assert abs(path.coordinates[-1].change) >= float(change.abs().sort(descending=True).values[8])


def test_a_given_r_and_one_point(tiny: LoadedModel, parent: torch.Tensor) -> None:
    one = rpath(tiny, parent, RPathSpec(prompts=PROMPTS, source=1, radius=3.0, multiples=(2.0,)))
    assert one.vectors.norm(dim=1).tolist() == pytest.approx([6.0], rel=1e-4)
    assert one.points[0].cos_previous is None
    assert len(one.coordinates) == 8  # measured from the vector's own direction


def test_units_report_progress(tiny: LoadedModel, parent: torch.Tensor) -> None:
    steps = rpath_steps(tiny, parent, RPathSpec(prompts=PROMPTS, source=1, multiples=(1.0, 2.0), steps=3))
    units = []
    while True:
        try:
            units.append(next(steps))
        except StopIteration as end:
            found = end.value
            break
    assert units == [(0, 2, 1), (0, 2, 2), (0, 2, 0), (1, 2, 1), (1, 2, 2), (1, 2, 0)]
    assert [p.steps for p in found.points] == [3, 3]
    assert math.isfinite(found.points[1].objective)


def test_bad_input_is_refused(tiny: LoadedModel, parent: torch.Tensor) -> None:
    spec = RPathSpec(prompts=PROMPTS, source=1)
    assert spec.multiples == DEFAULT_MULTIPLES
    for vector in (torch.ones(32), torch.zeros(64), torch.full((64,), math.nan)):
        with pytest.raises(EngineError):
            rpath(tiny, vector, spec)
    with pytest.raises(EngineError, match="source block 9"):
        rpath(tiny, parent, RPathSpec(prompts=PROMPTS, source=9))
    for multiples in ([], [0.0], [-1.0], [1.0, 1.0], [math.inf], [float(i + 1) for i in range(17)]):
        with pytest.raises(EngineError):
            RPathSpec.from_dict({"prompts": list(PROMPTS), "source": 1, "multiples": multiples})


def test_it_keeps_the_constraint_the_vector_was_trained_under(tiny: LoadedModel) -> None:
    """The second vector of an orthogonal run, retrained beside the first, stays orthogonal to it."""
    run = train_melbo(tiny, MelboSpec(prompts=PROMPTS, n_vectors=2, radius=R, steps=10))
    first, second = run.vectors
    kept = rpath(
        tiny, second, RPathSpec(prompts=PROMPTS, source=1, multiples=(0.5, 2.0)), orthogonal_to=first[None]
    )
    assert (kept.vectors @ first).abs().max() / R < 1e-4 * kept.vectors.norm(dim=1).max()
    assert kept.vectors.norm(dim=1).tolist() == pytest.approx([2.0, 8.0], rel=1e-4)
    free = rpath(tiny, second, RPathSpec(prompts=PROMPTS, source=1, multiples=(0.5, 2.0)))
    assert float((free.vectors @ first).abs().max()) > float((kept.vectors @ first).abs().max())
    with pytest.raises(EngineError, match="orthogonal to"):
        rpath(tiny, second, RPathSpec(prompts=PROMPTS, source=1), orthogonal_to=first[None, :32])
