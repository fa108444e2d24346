"""The tokens a vector pushes: read directly through the final norm and the unembedding, and in
effect on real prompts (tiny model, and the embedded one)."""

from __future__ import annotations

import pytest
import torch

from engine.discovery.tokens import (
    direct_read,
    effect_logprobs,
    final_norm,
    token_rows,
    unembedding,
    unsteered_logprobs,
    vocabulary,
)
from engine.errors import EngineError
from engine.methods.adapters import Adapter, random_factors
from engine.models import LoadedModel, get_blocks

PROMPTS = ("Tell me a story about a dragon.", "What is the capital of France?")


def through_norm(lm: LoadedModel, token: int) -> torch.Tensor:
    """A vector whose image through the final RMSNorm's weight is the token's unembedding row."""
    row = unembedding(lm.model).weight[token].detach().float()
    weight = final_norm(lm.model).weight.detach().float()
    return row / weight


def hooks(lm: LoadedModel) -> list[list[int]]:
    return [sorted(b._forward_hooks) + sorted(b._forward_pre_hooks) for b in get_blocks(lm.model)]


def test_an_unembedding_row_promotes_its_token_first(tiny: LoadedModel) -> None:
    for token in (40, 120, 250, 279, 287):
        cosine, logits = direct_read(tiny, through_norm(tiny, token))
        assert cosine.shape == logits.shape == (vocabulary(tiny),)
        assert int(cosine.argmax()) == token and float(cosine[token]) == pytest.approx(1.0, abs=1e-5)
        assert int(logits.argmax()) == token  # short random rows: the raw logit agrees here


def test_the_direct_read_depends_on_the_direction_only(tiny: LoadedModel) -> None:
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    (cosine, logits), (cosine2, logits2) = direct_read(tiny, v), direct_read(tiny, 7.5 * v)
    torch.testing.assert_close(cosine, cosine2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, logits2, rtol=1e-4, atol=1e-5)
    assert abs(float(logits.mean())) < 1e-5  # centred over the vocabulary
    rows = token_rows(tiny, cosine, 5, {"logit": logits})
    assert all(r["logit"] == round(float(logits[r["id"]]), 4) for r in rows["promoted"])
    values = [r["value"] for r in rows["promoted"]]
    assert values == sorted(values, reverse=True) and len(rows["suppressed"]) == 5
    assert rows["promoted"][0]["value"] > 0 > rows["suppressed"][0]["value"]
    assert all(isinstance(r["text"], str) for r in rows["promoted"] + rows["suppressed"])


def test_a_zero_vector_changes_nothing_and_hooks_are_removed(tiny: LoadedModel) -> None:
    before = hooks(tiny)
    change, kl = effect_logprobs(tiny, PROMPTS, block=1, vector=torch.zeros(64))
    assert bool((change == 0).all()) and kl == 0
    assert hooks(tiny) == before


def test_a_precomputed_base_gives_the_same_effect(tiny: LoadedModel) -> None:
    v = torch.randn(64, generator=torch.Generator().manual_seed(2))
    base = unsteered_logprobs(tiny, PROMPTS)
    assert base.shape == (2, unembedding(tiny.model).weight.shape[0])
    fresh = effect_logprobs(tiny, PROMPTS, block=1, vector=v)
    cached = effect_logprobs(tiny, PROMPTS, block=1, vector=v, base=base)
    assert torch.equal(fresh[0], cached[0]) and fresh[1] == cached[1]
    with pytest.raises(EngineError, match="for 2 prompts, not 1"):
        effect_logprobs(tiny, PROMPTS[:1], block=1, vector=v, base=base)


def test_steering_the_last_block_with_a_row_promotes_its_token_in_effect(tiny: LoadedModel) -> None:
    # At the last block's output only the final norm and the unembedding follow: a large enough
    # vector along a token's row (through the norm) makes that token the most promoted.
    last = tiny.info.n_blocks - 1
    for token in (40, 250):
        v = through_norm(tiny, token)
        change, kl = effect_logprobs(tiny, PROMPTS, block=last, vector=50 * v / v.norm())
        assert int(change.argmax()) == token and kl > 0


def test_an_adapter_is_read_in_effect(tiny: LoadedModel) -> None:
    gen = torch.Generator().manual_seed(1)
    adapter = Adapter(1, random_factors(gen, 128, 4), random_factors(gen, 64, 4), radius=8.0)
    change, kl = effect_logprobs(tiny, PROMPTS, adapter=adapter)
    assert kl > 0 and float(change.abs().max()) > 0
    still, zero = effect_logprobs(tiny, PROMPTS, adapter=adapter, scale=0.0)
    assert bool((still == 0).all()) and zero == 0


def test_bad_input_is_refused(tiny: LoadedModel) -> None:
    with pytest.raises(EngineError, match="shape"):
        direct_read(tiny, torch.ones(3))
    with pytest.raises(EngineError, match=r"a vector .* or an adapter"):
        effect_logprobs(tiny, PROMPTS)
    with pytest.raises(EngineError, match="at least one prompt"):
        effect_logprobs(tiny, (), block=1, vector=torch.ones(64))


@pytest.mark.slow
def test_on_the_embedded_model_a_row_promotes_its_token(embedded: LoadedModel) -> None:
    tok = embedded.tokenizer
    for word in (" Paris", " cat", " music", " happy", " river"):
        (token,) = tok(word, add_special_tokens=False)["input_ids"]
        cosine, logits = direct_read(embedded, through_norm(embedded, token))
        assert int(cosine.argmax()) == token, word
        assert float(logits[token]) > 0, word  # promoted by raw logit too, if not always first
