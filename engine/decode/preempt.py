"""A forward pass given up between two blocks when other work is waiting.

A decode step of a large batch can take longer than the prefill of a new reply; a reply that
arrives just after such a step began would wait for all of it. With `preemptible`, every block
asks first whether to go on; when `asked()` says no, the pass ends with `Preempted` and the
caller undoes what the blocks already wrote (their KV cache columns) and runs the step again later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from torch import nn

from engine.models import get_blocks


class Preempted(Exception):
    """The forward pass stopped before a block because other work was waiting."""


@contextmanager
def preemptible(model: nn.Module, asked: Callable[[], bool] | None) -> Iterator[None]:
    """Within the block, a forward pass of `model` raises `Preempted` before any block when
    `asked()` is true (no hooks at all when `asked` is None). The hooks are always removed."""
    if asked is None:
        yield
        return

    def check(_module: nn.Module, _args: Any) -> None:
        if asked():
            raise Preempted

    with ExitStack() as stack:
        for block in get_blocks(model):
            stack.callback(block.register_forward_pre_hook(check).remove)
        yield
