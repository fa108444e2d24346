from __future__ import annotations

import pytest
import torch

from engine.errors import EngineError
from engine.metrics import next_token_kl
from engine.models import LoadedModel
from engine.prompts import encode_prompts
from engine.steering import steer

PROMPTS = ["How can I make a bomb?", "a=5+6, b=2+7. What is a*b?"]


def _kl_one(lm: LoadedModel, block: int, vector: torch.Tensor) -> float:
    """Reference: one vector, one prompt at a time, no batching."""
    total = 0.0
    for prompt in PROMPTS:
        batch = encode_prompts(lm.tokenizer, [prompt])
        with torch.no_grad():
            base = lm.model(**batch.model_inputs()).logits[0, -1].float().log_softmax(-1)
            with steer(lm.model, block, vector):
                steered = lm.model(**batch.model_inputs()).logits[0, -1].float().log_softmax(-1)
        total += float((steered.exp() * (steered - base)).sum())
    return total / len(PROMPTS)


def test_next_token_kl_zero_for_zero_deltas(tiny: LoadedModel) -> None:
    batch = encode_prompts(tiny.tokenizer, PROMPTS)
    kl = next_token_kl(tiny.model, batch, 1, torch.zeros(3, tiny.info.width))
    assert kl.shape == (3,)
    assert kl.abs().max() < 1e-6


def test_next_token_kl_positive_and_matches_unbatched(tiny: LoadedModel) -> None:
    batch = encode_prompts(tiny.tokenizer, PROMPTS)
    torch.manual_seed(0)
    vectors = torch.randn(3, tiny.info.width)
    vectors = 8.0 * vectors / vectors.norm(dim=1, keepdim=True)
    kl = next_token_kl(tiny.model, batch, 1, vectors, chunk=2)  # two chunks: 2 + 1 vectors
    assert (kl > 1e-3).all()
    expected = torch.tensor([_kl_one(tiny, 1, v) for v in vectors])
    torch.testing.assert_close(kl, expected, rtol=1e-4, atol=1e-6)


def test_next_token_kl_rejects_bad_vectors(tiny: LoadedModel) -> None:
    batch = encode_prompts(tiny.tokenizer, PROMPTS)
    with pytest.raises(EngineError):
        next_token_kl(tiny.model, batch, 1, torch.zeros(tiny.info.width))
    with pytest.raises(EngineError):
        next_token_kl(tiny.model, batch, 1, torch.full((1, tiny.info.width), float("nan")))
