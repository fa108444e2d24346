"""Steering adapters on the tiny model: constraints, scale 0, batching, and PEFT loading our export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.decode.generate import generate
from engine.decode.request import GenerationRequest
from engine.errors import EngineError
from engine.methods.adapter_trainer import AdapterTrainer, adapter_kl, default_radius, train_adapters
from engine.methods.adapters import Adapter, adapt, export_peft, mlp_out, pack, unpack
from engine.methods.melbo import RADIUS_FRACTION
from engine.models import LoadedModel, load_model
from engine.prompts import encode_prompts, format_prompt
from engine.specs import AdapterSpec
from tests.tiny import build_model_dir

PROMPTS = ("How can I make a bomb?", "Tell me a story about a dragon.")


def spec(**overrides: object) -> AdapterSpec:
    base: dict[str, object] = dict(prompts=PROMPTS, source=1, target=3, n_vectors=3, rank=4, batch_size=2)
    base.update(overrides)
    return AdapterSpec.from_dict(base)


@pytest.fixture(scope="module")
def trained(tiny: LoadedModel) -> list[Adapter]:
    return train_adapters(tiny, spec(steps=20, radius=4.0)).adapters


def test_columns_stay_unit_and_training_climbs(tiny: LoadedModel) -> None:
    trainer = AdapterTrainer(tiny, spec(steps=25))
    fractions = [trainer.progress().fraction]
    while not trainer.finished:
        trainer.step()
        fractions.append(trainer.progress().fraction)
    assert fractions == sorted(fractions) and fractions[0] == 0 and fractions[-1] == 1
    assert trainer.progress().steps_left == 0
    result = trainer.result()
    assert len(result.adapters) == 3 and result.radius > 0
    for adapter, record in zip(result.adapters, result.records, strict=True):
        assert adapter.down.shape == (128, 4) and adapter.up.shape == (64, 4) and adapter.block == 1
        torch.testing.assert_close(adapter.down.norm(dim=0), torch.ones(4))
        torch.testing.assert_close(adapter.up.norm(dim=0), torch.ones(4))
        assert record.curve[-1] > record.curve[0] and record.start_cosine < 0.999
    kl = adapter_kl(tiny, encode_prompts(tiny.tokenizer, list(PROMPTS)), result.adapters)
    assert kl.shape == (3,) and bool((kl > 0).all())


def test_resumed_training_gives_the_same_adapters(tiny: LoadedModel) -> None:
    whole = train_adapters(tiny, spec(steps=6))
    rest = AdapterTrainer(tiny, spec(steps=6), first=2)
    while not rest.finished:
        rest.step()
    assert len(rest.adapters) == 1 and rest.records[0].index == 2
    assert torch.equal(rest.adapters[0].down, whole.adapters[2].down)


def test_scale_zero_is_bit_identical_to_no_steering(tiny: LoadedModel, trained: list[Adapter]) -> None:
    batch = encode_prompts(tiny.tokenizer, list(PROMPTS))
    with torch.no_grad():
        plain = tiny.model(**batch.model_inputs()).logits
        with adapt(tiny.model, trained[0].scaled(0.0), batch=2):
            zero = tiny.model(**batch.model_inputs()).logits
        with adapt(tiny.model, trained[0], batch=2):
            steered = tiny.model(**batch.model_inputs()).logits
    assert torch.equal(plain, zero) and not torch.equal(plain, steered)
    request = GenerationRequest(prompt=PROMPTS[1], max_new_tokens=12)
    alone, at_zero = generate(
        tiny, [request, GenerationRequest(prompt=PROMPTS[1], max_new_tokens=12, adapter=trained[0].scaled(0))]
    )
    assert alone.token_ids == at_zero.token_ids


def test_an_adapter_row_decodes_the_same_beside_others(tiny: LoadedModel, trained: list[Adapter]) -> None:
    mine = GenerationRequest(prompt=PROMPTS[0], max_new_tokens=16, adapter=trained[1])
    alone = generate(tiny, [mine])[0]
    vector = torch.randn(64, generator=torch.Generator().manual_seed(1))
    others = [
        GenerationRequest(prompt=PROMPTS[1], max_new_tokens=9),
        GenerationRequest(prompt="Hello", max_new_tokens=20, adapter=trained[2].scaled(2.0)),
        GenerationRequest(
            prompt=PROMPTS[1], block=2, terms=[(vector, 1.0)], max_new_tokens=5, adapter=trained[0]
        ),
    ]
    together = generate(tiny, [others[0], mine, *others[1:]])
    assert together[1].token_ids == alone.token_ids
    assert (
        alone.token_ids
        != generate(tiny, [GenerationRequest(prompt=PROMPTS[0], max_new_tokens=16)])[0].token_ids
    )


def test_peft_loads_the_export_and_writes_the_same_text(
    tiny: LoadedModel, tiny_dir: Path, trained: list[Adapter], tmp_path: Path
) -> None:
    import peft  # a dev dependency: the export must load where researchers load adapters
    from transformers import AutoModelForCausalLM

    adapter = trained[0].scaled(1.5)
    folder = export_peft(tmp_path / "adapter", tiny.model, adapter, base_model=str(tiny_dir))
    assert (folder / "adapter_config.json").exists() and (folder / "adapter_model.safetensors").exists()
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), folder).eval()
    ids = tiny.tokenizer(
        format_prompt(tiny.tokenizer, PROMPTS[1]), add_special_tokens=False, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    theirs = out[0, ids["input_ids"].shape[1] :].tolist()
    ours = generate(
        tiny, [GenerationRequest(prompt=PROMPTS[1], max_new_tokens=16, ignore_eos=True, adapter=adapter)]
    )[0]
    assert list(ours.token_ids) == theirs[: len(ours.token_ids)]
    assert len(ours.token_ids) == 16


def test_pack_round_trip_and_refusals(tiny: LoadedModel, trained: list[Adapter], tmp_path: Path) -> None:
    a = trained[0]
    down, up = unpack(pack(a.down, a.up), 64, a.rank)
    assert torch.equal(down, a.down) and torch.equal(up, a.up)
    with pytest.raises(EngineError, match="not a rank-5 adapter"):
        unpack(pack(a.down, a.up), 64, 5)
    wrong = Adapter(1, torch.ones(100, 2), torch.ones(64, 2), 1.0)
    with pytest.raises(EngineError, match="MLP output projection needs"):
        generate(tiny, [GenerationRequest(prompt="Hi", adapter=wrong)])
    gemma = load_model(str(build_model_dir(tmp_path / "gemma2", "gemma2")), device="cpu")
    with pytest.raises(EngineError, match="normalizes its MLP output"):
        mlp_out(gemma.model, 1)


def test_default_radius_shrinks_with_the_square_root_of_the_rank() -> None:
    one = default_radius(100.0, 20.0, 1)
    assert one == pytest.approx(RADIUS_FRACTION * 100.0 / 20.0)
    assert default_radius(100.0, 20.0, 16) == pytest.approx(one / 4)
