"""The R-path of a vector: how its direction turns as its norm changes.

The vector is trained again with MELBO's objective (fast mode, one vector) at each multiple of R,
each time warm-started from the vector itself, so each point is the optimum nearest to it at that
norm. The path is read in order of R: the cosine of each point with its neighbour below and with
the vector, and the coordinates of the unit direction that change most from the smallest R to the
largest (the vector's own direction stands in for the smallest when the path has one point).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import cosine_similarity

from engine.errors import EngineError
from engine.methods.melbo import MelboTrainer
from engine.models import LoadedModel
from engine.refine.specs import RPathSpec
from engine.specs import MelboSpec
from engine.units import run_steps

TOP_COORDINATES = 8  # coordinates reported as growing or shrinking fastest

# Units for a compute loop: (multiples finished, multiples in all, optimizer step of the current one).
RPathSteps = Generator[tuple[int, int, int], None, "RPath"]


@dataclass(frozen=True)
class PathPoint:
    multiple: float  # × R
    radius: float  # the norm trained at
    objective: float  # after training
    start_objective: float  # the vector itself, scaled to this norm
    steps: int
    cos_parent: float  # with the vector the path starts from
    cos_previous: float | None  # with the point at the next smaller R; None for the first

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Coordinate:
    index: int
    values: list[float]  # the unit direction's coordinate at each point of the path
    change: float  # last minus first
    grows: bool  # its magnitude grows along the path

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RPath:
    vectors: Tensor  # [K, d] float32, in order of R
    points: list[PathPoint]
    coordinates: list[Coordinate]  # the fastest changing first
    source: int
    target: int
    radius: float  # the R the multiples multiply
    curves: list[list[float]]  # objective at every step, per point

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, vectors left out."""
        return {
            "radius": self.radius,
            "points": [p.to_dict() for p in self.points],
            "coordinates": [c.to_dict() for c in self.coordinates],
        }


def check_vector(lm: LoadedModel, vector: Tensor) -> Tensor:
    """The vector as float32 on the CPU, refused unless it fits the model and is finite and nonzero."""
    width = lm.info.width
    if vector.shape != (width,):
        raise EngineError(f"the vector has shape {tuple(vector.shape)}, the model needs ({width},)")
    if not bool(torch.isfinite(vector).all()):
        raise EngineError("the vector contains NaN or infinite values")
    if float(vector.norm()) == 0.0:
        raise EngineError("the vector is zero: it has no direction to start from")
    return vector.detach().float().cpu()


def warm_trainer(
    lm: LoadedModel, spec: MelboSpec, start: Tensor, orthogonal_to: Tensor | None
) -> MelboTrainer:
    """A MELBO trainer of one vector (spec's R and prompts) warm-started at `start`, kept orthogonal
    to `orthogonal_to` [F, d] when given: the trainer counts those as the run's first F vectors."""
    fixed = torch.zeros(0, start.shape[0]) if orthogonal_to is None else orthogonal_to.detach().float().cpu()
    if fixed.dim() != 2 or fixed.shape[1] != start.shape[0]:
        raise EngineError(f"the vectors to stay orthogonal to must have shape [F, {start.shape[0]}]")
    n = fixed.shape[0] + 1
    starts = torch.cat([torch.zeros(n - 1, start.shape[0]), start[None]])  # [n, d]: only the last is read
    spec = replace(spec, n_vectors=n, orthogonal=n > 1)
    return MelboTrainer(lm, spec, orthogonal_to=fixed, starts=starts)


def coordinates(units: Tensor, k: int = TOP_COORDINATES) -> list[Coordinate]:
    """The k coordinates of unit directions [K, d] (in path order) that change most, first to last."""
    change = units[-1] - units[0]
    order = torch.argsort(change.abs(), descending=True)[: min(k, units.shape[1])]
    return [
        Coordinate(
            index=int(i),
            values=[float(v) for v in units[:, i]],
            change=float(change[i]),
            grows=bool(units[-1, i].abs() > units[0, i].abs()),
        )
        for i in order
    ]


def rpath_steps(
    lm: LoadedModel, vector: Tensor, spec: RPathSpec, *, orthogonal_to: Tensor | None = None
) -> RPathSteps:
    """The path one optimizer step per `next()` (a compute loop's unit); returns it. `orthogonal_to`
    [F, d]: vectors every point stays orthogonal to (the vector's earlier siblings in an orthogonal
    MELBO run, the constraint it was trained under)."""
    vector = check_vector(lm, vector)
    spec.span(lm.info)
    base = spec.radius if spec.radius is not None else float(vector.norm())
    multiples = sorted(spec.multiples)
    trained: list[Tensor] = []
    points: list[PathPoint] = []
    curves: list[list[float]] = []
    source = target = 0
    for i, m in enumerate(multiples):
        radius = m * base
        trainer = warm_trainer(lm, spec.melbo(radius, lm.info.width), vector, orthogonal_to)
        source, target = trainer.problem.source, trainer.problem.target
        start, _ = trainer.problem.final((vector * (radius / vector.norm()))[None])
        while not trainer.finished:
            trainer.step()
            batch = trainer.batch
            yield i, len(multiples), 0 if batch is None else batch.steps
        result = trainer.result()
        record, theta = result.records[0], result.vectors[0]
        trained.append(theta)
        curves.append(record.curve)
        points.append(
            PathPoint(
                multiple=m,
                radius=radius,
                objective=record.objective,
                start_objective=float(start[0]),
                steps=record.steps,
                cos_parent=float(cosine_similarity(theta, vector, dim=0)),
                cos_previous=float(cosine_similarity(theta, trained[-2], dim=0)) if i else None,
            )
        )
    stacked = torch.stack(trained)  # [K, d]
    units = stacked / stacked.norm(dim=1, keepdim=True)
    if len(multiples) == 1:
        units = torch.cat([(vector / vector.norm())[None], units])
    return RPath(
        vectors=stacked,
        points=points,
        coordinates=coordinates(units),
        source=source,
        target=target,
        radius=base,
        curves=curves,
    )


def rpath(
    lm: LoadedModel,
    vector: Tensor,
    spec: RPathSpec,
    *,
    orthogonal_to: Tensor | None = None,
    on_unit: Callable[[int, int, int], None] | None = None,
) -> RPath:
    """The whole path at once; `on_unit(done, total, step)` after each optimizer step."""
    steps = rpath_steps(lm, vector, spec, orthogonal_to=orthogonal_to)
    return run_steps(steps, on_unit)
