"""Passes over blocks that give way: other work runs between two blocks, and the pass goes on.

A training step of a large batch (a fast-MELBO step, a DCT batch, an L-BFGS evaluation of a chain)
takes long enough that a chat reply sent during it would wait for all of it. A caller that has
such work (the compute loop) runs a unit of training inside `giving_way(model, waiting, other)`.
Every pass over the blocks of a cached segment calls `pause()` before each block, forward and
backward (a hook on each block's input fires between two blocks of the backward pass), and a whole
model's forward does the same within `pausing(model)`. When `waiting()` is true, `pause()` runs
`other()` right there; the pass then goes on where it stopped, its autograd graph kept.

Pausing changes no result (tests compare the vectors bit for bit):
- `other()` never pauses itself (nested passes see no caller), and works on its own tensors;
- it runs only while the model carries exactly the hooks it carried when the unit began, so a
  pass that steers the model through hooks of its own (a whole-model step, a steered KL) never
  lends it out, and a pass is never handed hooks that `other()` left (it must leave none);
- the random state of torch is checked before and after: `other()` that draws from it fails
  loudly instead of changing what the paused work draws next.

On a GPU the backward pass runs in autograd's own thread, where no caller is set: its hooks do
nothing there, and only the forward pass gives way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from engine.models import get_blocks


@dataclass
class _Caller:
    model: nn.Module
    waiting: Callable[[], bool]
    other: Callable[[], None]
    hooks: frozenset[tuple[int, int]]  # the model's hooks when the unit began
    own: set[int] = field(default_factory=set)  # ids of `pausing`'s hooks, left out of the comparison
    pauses: int = 0  # how often `other()` ran


_caller: ContextVar[_Caller | None] = ContextVar("steerscope_pauses", default=None)


def _hooks(model: nn.Module) -> frozenset[tuple[int, int]]:
    """(module, hook id) of every forward hook and pre-hook on the model's modules."""
    found: set[tuple[int, int]] = set()
    for module in model.modules():
        for table in (module._forward_hooks, module._forward_pre_hooks):
            found.update((id(module), hook) for hook in table)
    return frozenset(found)


def _foreign(caller: _Caller) -> frozenset[tuple[int, int]]:
    """The model's hooks now, `pausing`'s own left out."""
    return frozenset(h for h in _hooks(caller.model) if h[1] not in caller.own)


@contextmanager
def giving_way(model: nn.Module, waiting: Callable[[], bool], other: Callable[[], None]) -> Iterator[_Caller]:
    """Within the block, passes over `model`'s blocks run `other()` between two blocks whenever
    `waiting()` is true."""
    caller = _Caller(model, waiting, other, _hooks(model))
    token = _caller.set(caller)
    try:
        yield caller
    finally:
        _caller.reset(token)


def pause() -> None:
    """A point between two blocks: run the caller's other work if some is waiting and the model is
    as the unit found it."""
    caller = _caller.get()
    if caller is None or not caller.waiting():
        return
    if _foreign(caller) != caller.hooks:
        return  # the pass steers the model through hooks: it cannot be lent out now
    rng = torch.get_rng_state()
    token = _caller.set(None)  # the other work's own passes never pause
    try:
        caller.other()
    finally:
        _caller.reset(token)
    caller.pauses += 1
    if _foreign(caller) != caller.hooks:
        raise RuntimeError("work run during a pause left hooks on the model")
    if not torch.equal(rng, torch.get_rng_state()):
        raise RuntimeError("work run during a pause drew from torch's global random state")


def waiting() -> bool:
    """Whether the caller has other work waiting (for passes that cannot pause, such as a steered
    decode step, and give the step up instead: engine/decode/preempt.py)."""
    caller = _caller.get()
    return caller is not None and caller.waiting()


def _pause_in_backward(grad: Tensor) -> None:
    pause()


def between(hidden: Tensor) -> None:
    """Mark a block's input so that the backward pass pauses there too (once that block's gradient
    is done, before the block before it starts)."""
    if hidden.requires_grad and _caller.get() is not None:
        hidden.register_hook(_pause_in_backward)


@contextmanager
def pausing(model: nn.Module) -> Iterator[None]:
    """A whole-model forward within the block pauses before every block (only under a caller)."""
    caller = _caller.get()
    if caller is None:
        yield
        return

    def before(_module: nn.Module, _args: Any) -> None:
        pause()

    with ExitStack() as stack:
        for block in get_blocks(model):
            handle = block.register_forward_pre_hook(before)
            caller.own.add(handle.id)
            stack.callback(caller.own.discard, handle.id)
            stack.callback(handle.remove)
        yield
