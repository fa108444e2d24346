"""The MELBO-ortho chain loss: how far a vector's downstream effect is from θ₀'s.

    z(θ) = mean over a prompt's real positions of hidden_states[target], θ added at the source
    loss(θ) = Σ_prompts ‖z(θ) − z(θ₀)‖₂

Through the whole model (the reference) or only the blocks between source and target on cached
activations (fast mode).
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.models import LoadedModel
from engine.prompts import PromptBatch
from engine.steer.metrics import next_token_kl
from engine.steer.segment import Segment
from engine.steer.steering import steer


class ChainLoss:
    """The chain loss on a fixed prompt batch, through the whole model or the cached segment."""

    def __init__(self, lm: LoadedModel, batch: PromptBatch, source: int, target: int, fast: bool) -> None:
        self.model, self.batch, self.source, self.target = lm.model, batch, source, target
        real = batch.attention_mask.float()  # [P, T]
        self.weights = (real / real.sum(dim=1, keepdim=True))[:, :, None]  # [P, T, 1] mean over real
        # float32 blocks: on a bfloat16 model L-BFGS stalled at 4x float32's loss (docs/benchmarks.md).
        self.segment = Segment(lm.model, batch, source, target, float32=True) if fast else None
        self.goal = torch.zeros(batch.size, lm.info.width, device=real.device)  # [P, d] z(θ₀): aim()

    def z(self, deltas: Tensor) -> Tensor:
        """z for each row of deltas [K, d]: [K, P, d] float32."""
        if self.segment is not None:
            hidden = self.segment.run(deltas).float()  # [K*P, T, d]
        else:
            parts = []
            for delta in deltas:  # the reference runs the whole model once per vector
                with steer(self.model, self.source, delta):
                    out = self.model(**self.batch.model_inputs(), output_hidden_states=True, use_cache=False)
                parts.append(out.hidden_states[self.target].float())
            hidden = torch.cat(parts)
        k = deltas.shape[0]
        return (hidden * self.weights.repeat(k, 1, 1)).sum(dim=1).view(k, self.batch.size, -1)

    def aim(self, theta0: Tensor) -> float:
        """Fix the goal z(θ₀); returns the loss of θ = 0."""
        with torch.no_grad():
            self.goal = self.z(theta0[None])[0]
            return float(self(torch.zeros_like(theta0)[None])[0])

    def __call__(self, deltas: Tensor) -> Tensor:
        """Loss of each row of deltas [K, d]: [K]."""
        return (self.z(deltas) - self.goal[None]).norm(dim=-1).sum(dim=-1)

    def measure(self, vectors: Tensor) -> tuple[Tensor, Tensor]:
        """Final loss and next-token KL of finished vectors [K, d]: ([K], [K]) on the CPU."""
        with torch.no_grad():
            values = self(vectors.to(self.goal.device)).cpu()
        return values, next_token_kl(self.model, self.batch, self.source, vectors)
