"""`python -m engine rpath | generalize | search`: refine a vector from a file into new vectors.

Each reads one vector of a safetensors or GGUF file (`--vectors`, `--index`), writes the new vectors
to `--out` (safetensors, with what was found in the metadata) and prints what was found as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engine.cli.commands import _block_of, _load, _prompts, add_prompt_args
from engine.errors import EngineError


def _vector(args: argparse.Namespace, width: int) -> tuple[Any, int, Any]:
    """The chosen vector of the file, the block it steers, and (with --keep-orthogonal) the file's
    vectors before it, which it stays orthogonal to."""
    from engine.vectors import load_any

    file = load_any(args.vectors, expected_width=width)
    if not 0 <= args.index < len(file.vectors):
        raise EngineError(f"--index {args.index}: the file holds vectors 0..{len(file.vectors) - 1}")
    block = args.block if args.block is not None else _block_of(file)
    earlier = file.vectors[: args.index] if getattr(args, "keep_orthogonal", False) and args.index else None
    return file.vectors[args.index], block, earlier


def _options(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _save(args: argparse.Namespace, vectors: Any, block: int, kind: str, found: dict[str, Any]) -> None:
    from engine.vectors import save_vectors

    save_vectors(args.out, vectors, {"model": args.model, "block": block, "method": kind, kind: found})
    print(json.dumps(found))
    print(f"saved {len(vectors)} vector(s) to {args.out}", file=sys.stderr)


def _bar(total: int, unit: str) -> tuple[Callable[..., None], Callable[[], None]]:
    """An on_unit callback that moves a tqdm bar one unit per call, and its close."""
    bar = tqdm(total=total or None, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def tick(*unit_state: Any) -> None:
        bar.update(1)
        bar.set_postfix_str(" ".join(str(s) for s in unit_state), refresh=False)

    return tick, bar.close


def cmd_rpath(args: argparse.Namespace) -> None:
    from engine.refine.rpath import rpath
    from engine.refine.specs import RPathSpec

    lm = _load(args)
    vector, block, earlier = _vector(args, lm.info.width)
    spec = RPathSpec.from_dict(
        {
            "prompts": _prompts(args),
            "source": block,
            **_options(args, ("target", "radius", "multiples", "steps")),
        }
    )
    tick, close = _bar(0, "step")
    found = rpath(lm, vector, spec, orthogonal_to=earlier, on_unit=tick)
    close()
    _save(args, found.vectors, block, "rpath", found.to_dict())


def cmd_generalize(args: argparse.Namespace) -> None:
    from engine.discovery.embedder import Embedder
    from engine.refine.generalize import generalize
    from engine.refine.specs import GeneralizeSpec

    lm = _load(args)
    vector, block, earlier = _vector(args, lm.info.width)
    given = {"prompts": _prompts(args), "source": block, "held_out": args.held_out or []}
    spec = GeneralizeSpec.from_dict({**given, **_options(args, ("target", "steps", "max_new_tokens"))})
    tick, close = _bar(0, "unit")
    found = generalize(lm, Embedder(), vector, spec, orthogonal_to=earlier, on_unit=tick)
    close()
    _save(args, found.vector[None], block, "generalize", found.to_dict())


def cmd_search(args: argparse.Namespace) -> None:
    import torch

    from engine.refine.search import search
    from engine.refine.specs import SearchSpec

    if (args.regex is None) == (args.judge is None):
        raise EngineError("give one of --regex or --judge")
    lm = _load(args)
    vector, block, _ = _vector(args, lm.info.width)
    detector = (
        {"detector": "regex", "pattern": args.regex}
        if args.regex
        else {"detector": "judge", "pattern": args.judge}
    )
    options = _options(args, ("budget", "population", "sigma", "keep", "seed", "max_new_tokens"))
    spec = SearchSpec.from_dict({"prompts": _prompts(args), "block": block, **detector, **options})
    tick, close = _bar(0, "unit")
    found = search(lm, vector, spec, on_unit=tick)
    close()
    _save(args, torch.stack([c.vector for c in found.best]), block, "search", found.to_dict())


def add_parsers(sub: Any, add_model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    def parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        add_model_args(p)
        add_prompt_args(p)
        p.add_argument(
            "--vectors", type=Path, required=True, help="safetensors or GGUF file holding the vector"
        )
        p.add_argument("--index", type=int, default=0, help="which vector of the file")
        p.add_argument("--block", type=int, help="the block it steers (default: from the file)")
        p.add_argument("--out", type=Path, required=True, help="safetensors file for the new vectors")
        return p

    keep = "stay orthogonal to the file's vectors before --index (as an orthogonal MELBO run trained it)"
    rp = parser("rpath", "train a vector again at several multiples of its norm: how its direction turns")
    rp.add_argument("--multiples", type=float, nargs="+", help="× R (default 0.5 0.75 1 1.5 2)")
    rp.add_argument(
        "--radius", "-R", type=float, help="R the multiples multiply (default: the vector's norm)"
    )
    rp.add_argument("--target", type=int)
    rp.add_argument("--steps", type=int)
    rp.add_argument("--keep-orthogonal", action="store_true", help=keep)

    ge = parser("generalize", "train a vector further on the prompts, compare it on held-out ones")
    ge.add_argument("--held-out", action="append", help="a prompt it is compared on (repeat for several)")
    ge.add_argument("--target", type=int)
    ge.add_argument("--steps", type=int)
    ge.add_argument("--max-new-tokens", type=int)
    ge.add_argument("--keep-orthogonal", action="store_true", help=keep)

    se = parser("search", "search around a vector for completions a detector scores higher")
    se.add_argument("--regex", help="a regular expression (case-insensitive)")
    se.add_argument("--judge", help="a yes/no question put to the model about each completion")
    se.add_argument("--budget", type=int, help="perturbed vectors tried in all (default 32)")
    se.add_argument("--population", type=int, help="perturbed vectors per generation (default 8)")
    se.add_argument("--sigma", type=float, help="perturbation size as a share of the norm (default 0.3)")
    se.add_argument("--keep", type=int, help="best vectors written (default 3)")
    se.add_argument("--seed", type=int)
    se.add_argument("--max-new-tokens", type=int)


COMMANDS = {"rpath": cmd_rpath, "generalize": cmd_generalize, "search": cmd_search}
