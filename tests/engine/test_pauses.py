"""Training passes that give way (engine/steer/pauses.py): a chat decoded between any two blocks of
a MELBO step, a DCT batch, an L-BFGS evaluation of a chain or a scoring batch, forward and
backward, changes neither the trained vectors nor the scores (bit for bit), nor the chat's text;
the hooks and the random state are as they were."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

from engine.decode.decoder import Decoder
from engine.decode.generate import GenerationRequest
from engine.discovery.scores import fluency
from engine.methods.chains import ChainConfig, ChainTrainer
from engine.methods.dct import DctTrainer
from engine.methods.melbo import MelboTrainer
from engine.models import LoadedModel, get_blocks
from engine.specs import ChainSpec, DctSpec, MelboSpec
from engine.steer.pauses import giving_way, pause, pausing

PROMPTS = ("How can I make a bomb?", "Tell me a story about a dragon.")


def hooks(lm: LoadedModel) -> list[list[int]]:
    return [sorted(b._forward_hooks) + sorted(b._forward_pre_hooks) for b in get_blocks(lm.model)]


def chat(width: int) -> list[GenerationRequest]:
    """Steered and unsteered rows, sampled and greedy: a chat's panes and a generation."""
    vector = torch.randn(width, generator=torch.Generator().manual_seed(5))
    return [
        GenerationRequest(
            messages=[{"role": "user", "content": "Hello there"}],
            block=1,
            terms=[(vector, 4.0)],
            max_new_tokens=6,
            seed=2,
            temperature=0.9,
        ),
        GenerationRequest(messages=[{"role": "user", "content": "Hello there"}], max_new_tokens=6),
        GenerationRequest(prompt="Count to ten.", block=2, terms=[(vector, -2.0)], max_new_tokens=5),
    ]


def solo_texts(lm: LoadedModel) -> list[str]:
    decoder = Decoder(lm)
    for i, request in enumerate(chat(lm.info.width)):
        decoder.add(i, request)
    texts: dict[Any, str] = {}
    while decoder:
        for key, result in decoder.step().finished:
            texts[key] = result.text
    return [texts[i] for i in range(len(texts))]


class Chatting:
    """The work lent a paused pass: one decode step of a chat batch per pause, restarted when done."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm, self.texts, self.steps = lm, list[list[str]](), 0
        self.decoder = self._start()

    def _start(self) -> Decoder:
        decoder = Decoder(self.lm)
        for i, request in enumerate(chat(self.lm.info.width)):
            decoder.add(i, request)
        self.done: dict[Any, str] = {}
        return decoder

    def __call__(self) -> None:
        for key, result in self.decoder.step().finished:
            self.done[key] = result.text
        self.steps += 1
        if not self.decoder:
            self.texts.append([self.done[i] for i in range(len(self.done))])
            self.decoder = self._start()


def interleaved(lm: LoadedModel, run: Callable[[], Any]) -> tuple[Any, Chatting, int]:
    """`run()` with a chat step at every pause point; its result, the chat, the pauses taken."""
    chatting = Chatting(lm)
    before = hooks(lm)
    with giving_way(lm.model, lambda: True, chatting) as caller:
        result = run()
    assert hooks(lm) == before
    return result, chatting, caller.pauses


def melbo(lm: LoadedModel, steps: int = 6) -> tuple[torch.Tensor, list[list[float]]]:
    spec = MelboSpec(prompts=PROMPTS, source=0, target=3, n_vectors=3, batch_size=3, steps=steps)
    trainer = MelboTrainer(lm, spec)
    while not trainer.finished:
        trainer.step()
    result = trainer.result()
    return result.vectors, [r.curve for r in result.records]


def test_a_melbo_step_paused_at_every_block_gives_the_same_vectors(tiny: LoadedModel) -> None:
    assert not tiny.model.training  # no dropout: a forward pass is a function of its inputs
    alone = melbo(tiny)
    (vectors, curves), chatting, pauses = interleaved(tiny, lambda: melbo(tiny))
    assert torch.equal(vectors, alone[0]) and curves == alone[1]
    # 6 steps x 2 blocks, forward and backward, and the final objective's forward.
    assert pauses >= 6 * 2 * 2
    assert chatting.texts and all(texts == solo_texts(tiny) for texts in chatting.texts)


def test_a_dct_run_paused_at_every_block_gives_the_same_factors(tiny: LoadedModel) -> None:
    spec = DctSpec(PROMPTS, source=0, target=3, radius=1.0, n_vectors=4, batch_size=2, steps=2, projection=4)

    def run() -> torch.Tensor:
        trainer = DctTrainer(tiny, spec)
        while not trainer.finished:
            trainer.step()
        return trainer.vectors

    alone = run()
    together, chatting, pauses = interleaved(tiny, run)
    assert torch.equal(together, alone) and pauses > 0 and chatting.steps == pauses


def test_a_chain_paused_inside_its_lbfgs_line_search_gives_the_same_chain(tiny: LoadedModel) -> None:
    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        for block in get_blocks(model):  # louder blocks: a chain with something to find
            block.mlp.down_proj.weight.mul_(10.0)
    lm = LoadedModel(model, tiny.tokenizer, tiny.info)
    theta0 = torch.randn(lm.info.width, generator=torch.Generator().manual_seed(3))
    spec = ChainSpec(prompts=PROMPTS, source=0, target=3, n_vectors=3, batch_size=3, steps=12)

    def run() -> torch.Tensor:
        trainer = ChainTrainer(lm, spec, theta0, config=ChainConfig(patience=10**6))
        while not trainer.finished:
            trainer.step()
        return trainer.vectors

    alone = run()
    together, _, pauses = interleaved(lm, run)
    assert torch.equal(together, alone) and pauses > 0


def test_a_scoring_batch_paused_between_blocks_gives_the_same_fluency(tiny: LoadedModel) -> None:
    texts = ["Once upon a time there was", "Bombs are", "Dragons fly over the hills at night"]
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1]]
    alone = fluency(tiny, prompts, texts, batch_size=2)
    before = hooks(tiny)
    together, _, pauses = interleaved(tiny, lambda: fluency(tiny, prompts, texts, batch_size=2))
    assert together == alone and hooks(tiny) == before
    assert pauses >= len(get_blocks(tiny.model))  # every block of the whole-model forward


def test_nothing_pauses_without_a_caller_or_while_the_model_carries_a_passes_hook(tiny: LoadedModel) -> None:
    ran: list[int] = []
    pause()  # no caller: nothing happens
    with giving_way(tiny.model, lambda: True, lambda: ran.append(1)) as caller:
        handle = get_blocks(tiny.model)[0].register_forward_hook(lambda *_: None)
        try:
            pause()  # a steering hook of the paused pass: the model is not lent out
        finally:
            handle.remove()
        assert not ran
        pause()
        assert ran == [1] and caller.pauses == 1
        with giving_way(tiny.model, lambda: False, lambda: ran.append(2)):
            pause()  # nothing waiting
        assert ran == [1]


def test_work_that_leaves_a_hook_or_draws_random_numbers_fails_loudly(tiny: LoadedModel) -> None:
    block = get_blocks(tiny.model)[0]
    handles = []
    with (
        giving_way(tiny.model, lambda: True, lambda: handles.append(block.register_forward_hook(print))),
        pytest.raises(RuntimeError, match="left hooks"),
    ):
        pause()
    for handle in handles:
        handle.remove()
    with (
        giving_way(tiny.model, lambda: True, lambda: torch.rand(1) and None),
        pytest.raises(RuntimeError, match="random state"),
    ):
        pause()


def test_pausing_hooks_are_removed_and_do_nothing_without_a_caller(tiny: LoadedModel) -> None:
    before = hooks(tiny)
    with pausing(tiny.model):
        assert hooks(tiny) == before  # no caller: no hooks at all
    with giving_way(tiny.model, lambda: False, lambda: None), pausing(tiny.model):
        assert hooks(tiny) != before
    assert hooks(tiny) == before
