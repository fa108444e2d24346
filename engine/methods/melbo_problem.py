"""What both MELBO modes share: the prompts, their target positions, the objective, the cached
segment between the source and target blocks, and R once it is known."""

from __future__ import annotations

import torch
from torch import Tensor

from engine.errors import EngineError
from engine.models import LoadedModel
from engine.prompts import encode_targets
from engine.specs import MelboSpec
from engine.steer.metrics import median_norm
from engine.steer.objective import Objective
from engine.steer.segment import Segment


class MelboProblem:
    """Everything both modes share: prompts, target positions, objective, cached segment."""

    def __init__(self, lm: LoadedModel, spec: MelboSpec) -> None:
        self.lm, self.spec = lm, spec
        self.source, self.target = spec.span(lm.info)
        device = next(lm.model.parameters()).device
        self.batch, mask = encode_targets(
            lm.tokenizer, spec.prompts, spec.positions, lm.info.context_length, device
        )
        q = spec.q if spec.q is not None else spec.p
        self.objective = Objective(mask, spec.p, q, spec.loss, spec.normalize)
        self.segment = Segment(lm.model, self.batch, self.source, self.target)
        self.residual_norm = median_norm(self.segment.h_source, mask)
        # None until the default share is known (a calibration, when neither R nor a share is given).
        self.known_radius: float | None = None
        if spec.radius is not None:
            self.known_radius = spec.radius
        elif spec.radius_fraction is not None:
            self.known_radius = spec.radius_fraction * self.residual_norm
        self.width = lm.info.width
        self.device = device

    @property
    def radius(self) -> float:
        if self.known_radius is None:
            raise EngineError("R is not known yet: the default R is still being calibrated")
        return self.known_radius

    def final(self, vectors: Tensor) -> tuple[Tensor, Tensor]:
        """Objective and top-position share of finished vectors [K, d], without gradients."""
        with torch.no_grad():
            z = self.segment.run(vectors.to(self.device))
            z0 = self.segment.z0
            return self.objective(z, z0).cpu(), self.objective.top_position_share(z, z0).cpu()
