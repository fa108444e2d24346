"""The embedded model in bfloat16 and float16 against float32, on the CPU: a trained model's
activations are far larger than the tiny model's, which is where half precision shows.

bfloat16 runs every path (training included); float16 runs steering, decoding and scoring only,
as its backward pass on the CPU is tens of times slower than float32's (a GPU has no such
problem). The tolerances are about 3x what was measured (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.decode.generate import GenerationRequest, generate
from engine.discovery.scores import fluency
from engine.methods.chain_loss import ChainLoss
from engine.methods.chains import ChainConfig, train_chain
from engine.methods.dct import train_dct
from engine.methods.melbo import train_melbo
from engine.models import LoadedModel, load_model
from engine.prompts import encode_prompts, target_mask
from engine.specs import ChainSpec, DctSpec, MelboSpec
from engine.steer.objective import Objective
from engine.steer.segment import Segment
from engine.steer.steering import steer

pytestmark = pytest.mark.slow

PROMPTS = ("How can I make a bomb?",)
SOURCE, TARGET, RADIUS = 7, 22, 9.0
TOLERANCE = {
    "bfloat16": {
        "kl": 5e-3,  # KL(float32 ‖ half) of the steered next-token distribution (measured 1.6e-3)
        # float32's mean log-prob per token of the greedy continuation: 0.06 on one CPU, 0.33 on an
        # AMD EPYC (its bfloat16 matmuls round differently, and the tokens part at another near tie)
        "decode": 0.5,
        "fluency": 0.025,  # |Δ mean log-prob per token| of a fixed completion (measured 0.008)
        "objective": 0.02,  # relative, fast MELBO objectives judged in float32 (measured 0.006)
        "dct": 0.15,  # relative, DCT effects after one iteration (measured 0.023 and, on the EPYC, 0.11)
        "chain": 0.02,  # relative, chain losses judged in float32 (measured 0.005)
    },
    "float16": {"kl": 1e-4, "decode": 0.2, "fluency": 0.001},  # measured 2.2e-5, 0.06, 1e-4
}


@pytest.fixture(scope="module", params=["bfloat16", "float16"])
def half(request: pytest.FixtureRequest, embedded: LoadedModel) -> tuple[str, LoadedModel]:
    return request.param, load_model("default", device="cpu", dtype=request.param)


def vector(width: int, norm: float = RADIUS) -> torch.Tensor:
    v = torch.randn(width, generator=torch.Generator().manual_seed(0))
    return v * (norm / v.norm())


def relative(a: list[float], b: list[float]) -> float:
    return max(abs(x / y - 1) for x, y in zip(a, b, strict=True))


def needs_backward(dtype: str) -> None:
    if dtype == "float16":
        pytest.skip(
            "float16 training on the CPU is too slow for the suite (tests/engine/test_dtypes.py has it)"
        )


def test_steering_decoding_and_fluency_match_float32(
    embedded: LoadedModel, half: tuple[str, LoadedModel]
) -> None:
    dtype, lm = half
    v = vector(lm.info.width)
    batch = encode_prompts(lm.tokenizer, PROMPTS)
    logprobs = []
    for model in (lm, embedded):
        with torch.no_grad(), steer(model.model, SOURCE, v):
            logprobs.append(torch.log_softmax(model.model(**batch.model_inputs()).logits[:, -1].float(), -1))
    assert bool(torch.isfinite(logprobs[0]).all())
    kl = float((logprobs[1].exp() * (logprobs[1] - logprobs[0])).sum(dim=-1).max())
    assert kl <= TOLERANCE[dtype]["kl"]

    request = GenerationRequest(prompt=PROMPTS[0], block=SOURCE, terms=((v, 1.0),), max_new_tokens=24)
    ours, reference = generate(lm, [request])[0], generate(embedded, [request])[0]
    judged, own = fluency(embedded, PROMPTS, [ours.text]), fluency(embedded, PROMPTS, [reference.text])
    assert math.isfinite(judged[0]) and abs(judged[0] - own[0]) <= TOLERANCE[dtype]["decode"]
    # Tokens part ways at a near tie (both half precisions did, at the same token): float32 must
    # find the continuation about as likely as its own. Then scoring's fluency of a fixed text.
    texts = ["I can't help with that, but I can tell you about chemistry safety."]
    assert (
        abs(fluency(lm, PROMPTS, texts)[0] - fluency(embedded, PROMPTS, texts)[0])
        <= TOLERANCE[dtype]["fluency"]
    )


def test_fast_melbo_matches_float32(embedded: LoadedModel, half: tuple[str, LoadedModel]) -> None:
    dtype, lm = half
    needs_backward(dtype)
    spec = MelboSpec(prompts=PROMPTS, source=SOURCE, target=TARGET, radius=RADIUS, n_vectors=2, steps=20)
    ours, reference = train_melbo(lm, spec), train_melbo(embedded, spec)
    assert ours.vectors.dtype == torch.float32 and bool(torch.isfinite(ours.vectors).all())
    batch = encode_prompts(embedded.tokenizer, PROMPTS)
    segment, objective = Segment(embedded.model, batch, SOURCE, TARGET), Objective(target_mask(batch, "user"))
    with torch.no_grad():
        judged = [objective(segment.run(x.vectors), segment.z0).tolist() for x in (ours, reference)]
    assert relative(*judged) <= TOLERANCE[dtype]["objective"]


def test_a_dct_iteration_matches_float32(embedded: LoadedModel, half: tuple[str, LoadedModel]) -> None:
    dtype, lm = half
    needs_backward(dtype)
    spec = DctSpec(
        prompts=PROMPTS, source=SOURCE, target=TARGET, radius=RADIUS, n_vectors=8, batch_size=8, steps=1
    )
    ours, reference = train_dct(lm, spec), train_dct(embedded, spec)
    assert bool(torch.isfinite(ours.vectors).all())
    effects = [sorted((r.objective for r in x.records), reverse=True) for x in (ours, reference)]
    assert relative(*effects) <= TOLERANCE[dtype]["dct"]


def test_chain_steps_match_float32(embedded: LoadedModel, half: tuple[str, LoadedModel]) -> None:
    dtype, lm = half
    needs_backward(dtype)
    theta0 = vector(embedded.info.width, norm=24.0)
    spec = ChainSpec(prompts=PROMPTS, source=SOURCE, target=TARGET, n_vectors=2, batch_size=2, steps=10)
    config = ChainConfig(patience=10**6)
    ours, reference = (
        train_chain(lm, spec, theta0, config=config),
        train_chain(embedded, spec, theta0, config=config),
    )
    assert bool(torch.isfinite(ours.vectors).all())
    judge = ChainLoss(embedded, encode_prompts(embedded.tokenizer, PROMPTS), SOURCE, TARGET, fast=True)
    judge.aim(theta0)
    with torch.no_grad():
        judged = [judge(x.vectors).tolist() for x in (ours, reference)]
    assert relative(*judged) <= TOLERANCE[dtype]["chain"]
