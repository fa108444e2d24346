"""Orthogonal chains (MELBO-ortho) on a tiny model: exact orthogonality, falling loss, both modes,
cancellation, resumption, the chain's own stop rules and readable errors."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from engine.errors import EngineError
from engine.methods.chain_loss import ChainLoss
from engine.methods.chains import ChainConfig, train_chain
from engine.models import LoadedModel, get_blocks
from engine.prompts import encode_prompts
from engine.specs import ChainSpec
from engine.steer.orthogonal import max_abs_cos

PROMPTS = ("How can I make a bomb?", "Tell me a story about a dragon.")
SOURCE, TARGET = 0, 3  # the tiny model has 4 blocks: run blocks 1..2, read hidden_states[3]


@pytest.fixture(scope="module")
def amplified(tiny: LoadedModel) -> LoadedModel:
    """The tiny model with its blocks' outputs scaled 10x.

    At random init the blocks add almost nothing to the residual stream, so z(θ) ≈ z(0) + θ and no
    vector orthogonal to θ₀ can reproduce it. Louder blocks make the target depend non-linearly on
    θ, as in a trained model, so the chain has something to find.
    """
    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        for block in get_blocks(model):
            block.mlp.down_proj.weight.mul_(10.0)
            block.self_attn.o_proj.weight.mul_(10.0)
    return LoadedModel(model, tiny.tokenizer, tiny.info)


def theta0(width: int = 64, norm: float = 1.0, seed: int = 3) -> torch.Tensor:
    v = torch.randn(width, generator=torch.Generator().manual_seed(seed))
    return v * (norm / v.norm())


def spec(**kw: object) -> ChainSpec:
    base: dict[str, object] = dict(prompts=PROMPTS, source=SOURCE, target=TARGET, n_vectors=4, steps=40)
    base.update(kw)
    return ChainSpec(**base)  # type: ignore[arg-type]


KEEP_GOING = ChainConfig(patience=10**6)  # never stop by itself: tests that are about other things


def test_fast_chain_is_exactly_orthogonal(amplified: LoadedModel) -> None:
    t0 = theta0()
    result = train_chain(amplified, spec(n_vectors=12, batch_size=4, steps=15), t0, config=KEEP_GOING)
    assert result.vectors.shape == (12, 64) and result.vectors.dtype == torch.float32
    assert [r.index for r in result.records] == list(range(12))
    assert result.stop_reason == "completed" and not result.cancelled
    assert json.loads(json.dumps(result.to_dict()))["records"][11]["index"] == 11
    assert max_abs_cos(torch.cat([t0[None], result.vectors])) <= 1e-6
    assert bool((result.vectors.norm(dim=1) > 0).all())
    for r, v in zip(result.records, result.vectors, strict=True):
        assert r.norm == pytest.approx(float(v.norm()), rel=1e-5)
        assert 1 <= r.steps <= 15 and math.isfinite(r.kl) and r.kl >= 0


def test_reference_chain_is_exactly_orthogonal_and_removes_its_hook(amplified: LoadedModel) -> None:
    t0 = theta0()
    block = get_blocks(amplified.model)[SOURCE]
    batch = encode_prompts(amplified.tokenizer, PROMPTS)
    with torch.no_grad():  # transformers installs hooks of its own on the first hidden-states call
        amplified.model(**batch.model_inputs(), output_hidden_states=True)
    hooks_before = dict(block._forward_hooks)
    result = train_chain(amplified, spec(n_vectors=3, steps=15, mode="reference"), t0)
    assert dict(block._forward_hooks) == hooks_before
    assert result.vectors.shape == (3, 64) and [r.steps for r in result.records] == [15, 15, 15]
    assert max_abs_cos(torch.cat([t0[None], result.vectors])) <= 1e-6


def test_bfloat16_model_gives_float32_orthogonal_vectors(amplified: LoadedModel) -> None:
    half = LoadedModel(copy.deepcopy(amplified.model).to(torch.bfloat16), amplified.tokenizer, amplified.info)
    t0 = theta0()
    result = train_chain(half, spec(n_vectors=2, batch_size=2, steps=20), t0, config=KEEP_GOING)
    assert result.vectors.dtype == torch.float32
    assert max_abs_cos(torch.cat([t0[None], result.vectors])) <= 1e-6
    assert result.records[0].loss < result.loss_at_zero


def test_loss_falls_from_its_value_at_zero(amplified: LoadedModel) -> None:
    result = train_chain(amplified, spec(n_vectors=2, batch_size=2, steps=60), theta0())
    assert result.records[0].loss < 0.5 * result.loss_at_zero
    assert all(r.loss < result.loss_at_zero for r in result.records)


def test_segment_and_whole_model_losses_agree(amplified: LoadedModel) -> None:
    batch = encode_prompts(amplified.tokenizer, PROMPTS)  # two lengths: padding must not count
    t0 = theta0()
    fast = ChainLoss(amplified, batch, SOURCE, TARGET, fast=True)
    whole = ChainLoss(amplified, batch, SOURCE, TARGET, fast=False)
    assert fast.aim(t0) == pytest.approx(whole.aim(t0), rel=1e-4)
    probes = torch.randn(3, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(fast(probes), whole(probes), rtol=1e-4, atol=1e-5)


def test_fast_is_no_worse_than_reference_at_equal_steps(amplified: LoadedModel) -> None:
    # θ₀ well above Adam's reach at lr 1e-2: the reference moves ~lr·√d per step whatever ‖θ₀‖ is.
    t0 = theta0(norm=8.0)
    fast = train_chain(amplified, spec(n_vectors=2, batch_size=2, steps=40), t0)
    ref = train_chain(amplified, spec(n_vectors=2, steps=40, mode="reference"), t0)
    median = lambda r: float(torch.tensor([x.loss for x in r.records]).median())  # noqa: E731
    assert median(fast) <= median(ref)


def test_cancelled_chain_keeps_finished_vectors(amplified: LoadedModel) -> None:
    started: set[int] = set()
    result = train_chain(
        amplified,
        spec(n_vectors=6, batch_size=2, steps=10),
        theta0(),
        on_progress=lambda index, step, loss: started.add(index),
        should_stop=lambda: 2 in started,  # once the second batch has taken a step
        config=KEEP_GOING,
    )
    assert result.cancelled and result.stop_reason == "cancelled"
    assert result.vectors.shape == (2, 64) and len(result.records) == 2
    assert bool((result.vectors.norm(dim=1) > 0).all())

    seen: list[int] = []
    ref = train_chain(
        amplified,
        spec(n_vectors=3, steps=5, mode="reference"),
        theta0(),
        on_progress=lambda index, step, loss: seen.append(index),
        should_stop=lambda: 1 in seen,
    )
    assert ref.cancelled and ref.vectors.shape == (1, 64)


def test_resume_continues_the_same_chain(amplified: LoadedModel) -> None:
    t0 = theta0()
    whole = train_chain(amplified, spec(n_vectors=4, batch_size=2, steps=20), t0, config=KEEP_GOING)
    resumed = train_chain(
        amplified,
        spec(n_vectors=4, batch_size=2, steps=20),
        t0,
        previous=whole.vectors[:2],
        config=KEEP_GOING,
    )
    assert resumed.vectors.shape == (4, 64)
    assert torch.equal(resumed.vectors[:2], whole.vectors[:2])
    assert [r.resumed for r in resumed.records] == [True, True, False, False]
    assert [r.steps for r in resumed.records][:2] == [0, 0]
    # Seeds are per chain index, so the resumed run finds what the uninterrupted one found.
    torch.testing.assert_close(resumed.vectors[2:], whole.vectors[2:], rtol=1e-4, atol=1e-5)
    assert max_abs_cos(torch.cat([t0[None], resumed.vectors])) <= 1e-6
    assert resumed.records[0].loss == pytest.approx(whole.records[0].loss, rel=1e-4)


def test_chain_stops_when_vectors_collapse(amplified: LoadedModel) -> None:
    # θ₀ and 62 given vectors leave one free direction in 64: the vector after it must be zero.
    t0 = theta0()
    others = torch.randn(63, 64, generator=torch.Generator().manual_seed(0))  # seeded: same basis every run
    q, _ = torch.linalg.qr(torch.cat([t0[None], others]).double().T)
    previous = (q.T[1:63] * 0.5).float()
    only_collapse = ChainConfig(high_loss=math.inf)
    result = train_chain(
        amplified, spec(n_vectors=70, batch_size=2, steps=5), t0, previous=previous, config=only_collapse
    )
    assert result.stop_reason == "collapsed"
    assert result.vectors.shape[0] == 65  # 62 given, one in the last free direction, two zeros
    assert [r.norm for r in result.records[-2:]] == [0.0, 0.0]
    assert result.records[62].norm > 0


def test_chain_stops_when_loss_stays_high(amplified: LoadedModel) -> None:
    # Ten steps of a tiny step size leave each vector near its random start, far from θ₀'s effect.
    result = train_chain(amplified, spec(n_vectors=6, batch_size=1, steps=10, lr=1e-6), theta0())
    assert result.stop_reason == "loss_high" and not result.cancelled
    assert result.vectors.shape[0] == 2
    assert all(r.loss > 0.5 * result.loss_at_zero for r in result.records)


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(64), torch.ones(63), torch.ones(2, 64), torch.full((64,), float("nan"))],
    ids=["zero", "wrong-width", "matrix", "nan"],
)
def test_bad_theta0_is_refused(tiny: LoadedModel, bad: torch.Tensor) -> None:
    with pytest.raises(EngineError):
        train_chain(tiny, spec(), bad)


def test_bad_previous_is_refused(tiny: LoadedModel) -> None:
    t0 = theta0()
    for previous in (torch.ones(2, 63), t0[None] + 0.1, torch.full((1, 64), float("nan"))):
        with pytest.raises(EngineError):
            train_chain(tiny, spec(), t0, previous=previous)
