from __future__ import annotations

import pytest
import torch

from engine.errors import EngineError
from engine.models import LoadedModel
from engine.prompts import encode_prompts, target_mask
from engine.steer.metrics import (
    cosine_matrix,
    downstream_cosine_matrix,
    downstream_norms,
    next_token_kl,
    residual_norm,
)
from engine.steer.segment import Segment
from engine.steer.steering import steer

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


def _unit(k: int, width: int, seed: int = 0) -> torch.Tensor:
    v = torch.randn(k, width, generator=torch.Generator().manual_seed(seed))
    return v / v.norm(dim=1, keepdim=True)


def test_cosine_matrix_of_orthonormal_vectors_is_identity() -> None:
    q, _ = torch.linalg.qr(torch.randn(64, 5, generator=torch.Generator().manual_seed(1)))
    vectors = 7.0 * q.T  # [5, 64] orthogonal rows of norm 7
    torch.testing.assert_close(cosine_matrix(vectors), torch.eye(5), atol=1e-6, rtol=0)
    pair = torch.stack([vectors[0], -3 * vectors[0]])
    torch.testing.assert_close(cosine_matrix(pair), torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))


def test_residual_norm_from_segment_and_from_model_agree(tiny: LoadedModel) -> None:
    batch = encode_prompts(tiny.tokenizer, PROMPTS)
    mask = target_mask(batch, "user")
    with torch.no_grad():
        hidden = tiny.model(**batch.model_inputs(), output_hidden_states=True).hidden_states[2]
    expected = float(hidden[mask].norm(dim=-1).median())  # hidden_states[2] = output of block 1
    seg = Segment(tiny.model, batch, 1, 3)
    assert residual_norm(seg, mask) == pytest.approx(expected, rel=1e-5)
    assert residual_norm(tiny.model, mask, batch=batch, block=1) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(EngineError):
        residual_norm(tiny.model, mask)


def test_downstream_norms_zero_for_zero_vectors(tiny: LoadedModel) -> None:
    batch = encode_prompts(tiny.tokenizer, PROMPTS)
    mask = target_mask(batch, "user")
    seg = Segment(tiny.model, batch, 1, 3)
    norms = downstream_norms(seg, torch.zeros(5, tiny.info.width), mask, chunk=2)
    assert norms.shape == (5,)
    # Not exactly 0: matmuls over a different number of rows round differently.
    assert norms.max() < 1e-5 * float(seg.z0[mask].norm(dim=-1).mean())


def test_downstream_norms_match_a_full_steered_forward(tiny: LoadedModel) -> None:
    batch = encode_prompts(tiny.tokenizer, PROMPTS)
    mask = target_mask(batch, "last:3")
    seg = Segment(tiny.model, batch, 1, 3)
    vectors = 4.0 * _unit(3, tiny.info.width)
    norms = downstream_norms(seg, vectors, mask, chunk=2)
    with torch.no_grad():
        base = tiny.model(**batch.model_inputs(), output_hidden_states=True).hidden_states[3]
        expected = []
        for v in vectors:
            with steer(tiny.model, 1, v):
                z = tiny.model(**batch.model_inputs(), output_hidden_states=True).hidden_states[3]
            expected.append(float((z - base)[mask].norm(dim=-1).mean()))
    assert (norms > 1e-3).all()
    torch.testing.assert_close(norms, torch.tensor(expected), rtol=1e-4, atol=1e-6)


def test_downstream_cosines_are_linear_at_small_radius(tiny: LoadedModel) -> None:
    batch = encode_prompts(tiny.tokenizer, PROMPTS)
    mask = target_mask(batch, "user")
    seg = Segment(tiny.model, batch, 1, 3)
    v = 1e-2 * residual_norm(seg, mask) * _unit(2, tiny.info.width)
    vectors = torch.stack([v[0], -v[0], 2 * v[0], v[1]])
    cos = downstream_cosine_matrix(seg, vectors, mask, chunk=3)
    assert cos.shape == (4, 4)
    torch.testing.assert_close(cos.diagonal(), torch.ones(4))
    assert cos[0, 1] < -0.99  # the response to -v is minus the response to v
    assert cos[0, 2] > 0.99
    assert abs(float(cos[0, 3])) < 0.5  # another direction does something else
