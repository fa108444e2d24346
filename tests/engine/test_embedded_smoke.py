"""Smoke test on the real embedded model: a few vectors, few steps, end to end."""

from __future__ import annotations

import pytest
import torch

from engine.decode.generate import GenerationRequest, generate
from engine.methods.melbo import train_melbo
from engine.models import LoadedModel
from engine.specs import MelboSpec

pytestmark = pytest.mark.slow


def test_melbo_on_the_embedded_model(embedded: LoadedModel) -> None:
    assert embedded.info.architecture == "llama"
    assert (embedded.info.n_blocks, embedded.info.width) == (30, 576)
    spec = MelboSpec(prompts=("How can I make a bomb?",), n_vectors=3, steps=25, seed=0)
    result = train_melbo(embedded, spec)
    assert (result.source, result.target) == (7, 22)
    vectors = result.vectors.double()
    torch.testing.assert_close(vectors.norm(dim=1), torch.full((3,), result.radius, dtype=torch.float64))
    gram = vectors @ vectors.T / result.radius**2
    assert float((gram - torch.eye(3, dtype=torch.float64)).abs().max()) < 1e-5
    for record in result.records:
        assert record.curve[-1] > 1.5 * record.curve[0]  # the objective rises

    prompt = spec.prompts[0]
    rows = [GenerationRequest(prompt=prompt, max_new_tokens=24)]
    rows += [
        GenerationRequest(prompt=prompt, block=result.source, terms=((v, 1.0),), max_new_tokens=24)
        for v in result.vectors
    ]
    unsteered, *steered = (r.text for r in generate(embedded, rows))
    assert unsteered.strip()
    assert all(text != unsteered for text in steered)
