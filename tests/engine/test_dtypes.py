"""bfloat16 and float16 models (what a GPU runs) against float32, on the CPU: steering, decoding,
training (fast MELBO, a DCT iteration, chain steps) and scoring give finite results within a
stated tolerance of float32's.

The tolerances are about 10x what was measured on the tiny model with louder blocks (below) and
are the ones docs/benchmarks.md states. float16 has 3 more mantissa bits than bfloat16, so its
tolerances are tighter.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from engine.decode.generate import GenerationRequest, generate
from engine.discovery.embedder import Embedder
from engine.discovery.scores import ScoreInput, fluency, score
from engine.methods.chain_loss import ChainLoss
from engine.methods.chains import ChainConfig, train_chain
from engine.methods.dct import train_dct
from engine.methods.melbo import train_melbo
from engine.models import LoadedModel, describe, get_blocks, load_model
from engine.prompts import encode_prompts, target_mask
from engine.specs import ChainSpec, DctSpec, MelboSpec
from engine.steer.objective import Objective
from engine.steer.segment import Segment
from engine.steer.steering import steer

PROMPTS = ("How can I make a bomb?", "Tell me a story about a dragon.")
SOURCE, TARGET, BLOCK, RADIUS = 0, 3, 1, 2.0  # the tiny model has 4 blocks
HALF = ("bfloat16", "float16")
# Per dtype: the largest difference from float32 each path may show.
TOLERANCE = {
    "bfloat16": {
        "kl": 1e-5,  # KL(float32 ‖ half) of the steered next-token distribution (measured 7e-7)
        "fluency": 0.01,  # |Δ mean log-prob per token| of a scored completion (measured 0.0004)
        "decode": 0.1,  # |Δ float32 mean log-prob per token| of the greedy continuation (measured 0)
        "objective": 0.02,  # relative, fast MELBO objectives (measured 0.002)
        "dct": 0.02,  # relative, DCT effects ⟨u, Δ(R·v)⟩ after one iteration (measured 0.002)
        "alpha": 0.05,  # relative, DCT α after one iteration (measured 0.006)
        "chain": 0.01,  # relative, chain losses judged in float32 (measured 0.0007)
    },
    "float16": {
        "kl": 2e-6,  # measured 2.5e-7
        "fluency": 0.002,  # measured 0.0001
        "decode": 0.1,  # measured 0
        "objective": 0.005,  # measured 0.0001
        "dct": 0.005,  # measured 0.0004
        "alpha": 0.01,  # measured 0.0006
        "chain": 0.01,  # measured 0.0002
    },
}


@pytest.fixture(scope="module")
def loud(tiny_dir: Path) -> LoadedModel:
    """The tiny model, loaded in float32, with its blocks' outputs scaled 10x.

    At random init the blocks add almost nothing to the residual stream, so any dtype would
    agree; louder blocks make the outputs depend non-linearly on the steering, as in a trained
    model, and give rounding something to amplify."""
    lm = load_model(str(tiny_dir), device="cpu", dtype="float32")
    with torch.no_grad():
        for block in get_blocks(lm.model):
            block.mlp.down_proj.weight.mul_(10.0)
            block.self_attn.o_proj.weight.mul_(10.0)
    return lm


def as_dtype(lm: LoadedModel, dtype: str) -> LoadedModel:
    """A copy of the model in another dtype, described as load_model would describe it."""
    model = copy.deepcopy(lm.model).to(getattr(torch, dtype))
    return LoadedModel(model, lm.tokenizer, describe(model, lm.tokenizer, lm.info.name))


@pytest.fixture(scope="module", params=HALF)
def half(request: pytest.FixtureRequest, loud: LoadedModel) -> tuple[str, LoadedModel]:
    return request.param, as_dtype(loud, request.param)


def vector(width: int = 64, norm: float = RADIUS, seed: int = 0) -> torch.Tensor:
    v = torch.randn(width, generator=torch.Generator().manual_seed(seed))
    return v * (norm / v.norm())


def relative(a: list[float], b: list[float]) -> float:
    return max(abs(x / y - 1) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("dtype", HALF)
def test_load_model_gives_the_dtype_asked_for(tiny_dir: Path, dtype: str) -> None:
    lm = load_model(str(tiny_dir), device="cpu", dtype=dtype)
    assert lm.info.dtype == dtype
    assert {p.dtype for p in lm.model.parameters()} == {getattr(torch, dtype)}


def last_logprobs(lm: LoadedModel, delta: torch.Tensor | None) -> torch.Tensor:
    batch = encode_prompts(lm.tokenizer, PROMPTS)
    with torch.no_grad(), steer(lm.model, BLOCK, delta):
        logits = lm.model(**batch.model_inputs()).logits[:, -1]
    return torch.log_softmax(logits.float(), dim=-1)  # [P, V]


def kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Largest KL(reference ‖ other) over the rows of two log-probability matrices [P, V]."""
    return float((reference.exp() * (reference - other)).sum(dim=-1).max())


def test_steering_matches_float32(loud: LoadedModel, half: tuple[str, LoadedModel]) -> None:
    dtype, lm = half
    steered = last_logprobs(lm, vector())
    assert bool(torch.isfinite(steered).all())
    assert kl(last_logprobs(loud, vector()), steered) <= TOLERANCE[dtype]["kl"]
    # Scale 0 is no vector at all, in any dtype.
    assert torch.equal(last_logprobs(lm, vector() * 0.0), last_logprobs(lm, None))


def test_decoding_matches_float32(loud: LoadedModel, half: tuple[str, LoadedModel]) -> None:
    dtype, lm = half
    requests = [
        GenerationRequest(prompt=p, block=BLOCK, terms=((vector(), 1.0),), max_new_tokens=16, ignore_eos=True)
        for p in PROMPTS
    ]
    ours, reference = generate(lm, requests), generate(loud, requests)
    assert all(r.n_tokens == 16 for r in ours)
    # Tokens may part ways at a near tie (here they did not); what counts is that float32 finds
    # the half-precision continuation about as likely as its own.
    judged = fluency(loud, PROMPTS, [r.text for r in ours])
    own = fluency(loud, PROMPTS, [r.text for r in reference])
    assert all(math.isfinite(x) for x in judged)
    assert max(abs(a - b) for a, b in zip(judged, own, strict=True)) <= TOLERANCE[dtype]["decode"]


def test_fast_melbo_matches_float32(loud: LoadedModel, half: tuple[str, LoadedModel]) -> None:
    dtype, lm = half
    spec = MelboSpec(prompts=PROMPTS, source=SOURCE, target=TARGET, radius=RADIUS, n_vectors=4, steps=30)
    ours, reference = train_melbo(lm, spec), train_melbo(loud, spec)
    assert ours.vectors.dtype == torch.float32 and bool(torch.isfinite(ours.vectors).all())
    gram = ours.vectors.double() @ ours.vectors.double().T / RADIUS**2
    torch.testing.assert_close(gram, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)
    assert relative(ours.objectives, reference.objectives) <= TOLERANCE[dtype]["objective"]
    # The vectors themselves are as good, judged by float32's objective.
    batch = encode_prompts(loud.tokenizer, PROMPTS)
    segment, objective = Segment(loud.model, batch, SOURCE, TARGET), Objective(target_mask(batch, "user"))
    with torch.no_grad():
        judged = [objective(segment.run(v.vectors), segment.z0).tolist() for v in (ours, reference)]
    assert relative(*judged) <= TOLERANCE[dtype]["objective"]


def test_a_dct_iteration_matches_float32(loud: LoadedModel, half: tuple[str, LoadedModel]) -> None:
    dtype, lm = half
    spec = DctSpec(
        prompts=PROMPTS, source=SOURCE, target=TARGET, radius=RADIUS, n_vectors=6, batch_size=4, steps=1
    )
    ours, reference = train_dct(lm, spec), train_dct(loud, spec)
    assert bool(torch.isfinite(ours.vectors).all()) and ours.vectors.dtype == torch.float32
    effects = [sorted((r.objective for r in x.records), reverse=True) for x in (ours, reference)]
    assert relative(*effects) <= TOLERANCE[dtype]["dct"]
    assert relative(sorted(ours.alphas), sorted(reference.alphas)) <= TOLERANCE[dtype]["alpha"]


def test_chain_steps_match_float32(loud: LoadedModel, half: tuple[str, LoadedModel]) -> None:
    dtype, lm = half
    spec = ChainSpec(prompts=PROMPTS, source=SOURCE, target=TARGET, n_vectors=2, batch_size=2, steps=20)
    config = ChainConfig(patience=10**6)
    ours, reference = (
        train_chain(lm, spec, vector(), config=config),
        train_chain(loud, spec, vector(), config=config),
    )
    assert bool(torch.isfinite(ours.vectors).all()) and all(math.isfinite(r.loss) for r in ours.records)
    judge = ChainLoss(loud, encode_prompts(loud.tokenizer, PROMPTS), SOURCE, TARGET, fast=True)
    judge.aim(vector())
    with torch.no_grad():
        judged = [judge(x.vectors).tolist() for x in (ours, reference)]
    assert relative(*judged) <= TOLERANCE[dtype]["chain"]


def test_scoring_matches_float32(loud: LoadedModel, half: tuple[str, LoadedModel]) -> None:
    dtype, lm = half
    inputs = [
        ScoreInput(PROMPTS[0], "Once upon a time there was a dragon.", "I cannot help with that."),
        ScoreInput(PROMPTS[1], "The dragon slept.", "A dragon lived in a cave."),
        ScoreInput(PROMPTS[0], "Bananas are yellow.", "I cannot help with that.", random=True),
        ScoreInput(PROMPTS[1], "Dragons dragons dragons.", "A dragon lived in a cave.", random=True),
    ]
    embedder = Embedder()
    ours, reference = score(lm, embedder, inputs), score(loud, embedder, inputs)
    for a, b in zip(ours, reference, strict=True):
        assert math.isfinite(a.fluency)
        assert abs(a.fluency - b.fluency) <= TOLERANCE[dtype]["fluency"]
        assert (a.effect, a.beyond_random) == (b.effect, b.beyond_random)  # the embedder is float32
