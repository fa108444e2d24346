"""`python -m engine train|chain|generate|calibrate|demo|score|cluster|detect|rpath|generalize|search`:
scripted use and GPU boxes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.cli import discovery as discovery_commands
from engine.cli import refine as refine_commands
from engine.cli.commands import COMMANDS, add_model_args, add_prompt_args
from engine.errors import EngineError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train MELBO vectors, a random baseline or DCT vectors into a safetensors file "
        "(steering adapters: a folder of PEFT adapters)",
    )
    add_model_args(train)
    add_prompt_args(train)
    train.add_argument(
        "--out", type=Path, required=True, help="safetensors file to write (adapters: a folder)"
    )
    train.add_argument("--samples", type=Path, help="also write greedy completions per vector to this JSONL")
    train.add_argument("--max-new-tokens", type=int, default=48)
    train.add_argument("--source", type=int, help="block whose output is steered (default from depth)")
    train.add_argument("--target", type=int, help="hidden_states index the objective reads (default L-8)")
    train.add_argument(
        "--radius",
        "-R",
        type=float,
        help="vector norm R (default: calibrated per model; 0.110 x residual norm on the embedded model)",
    )
    train.add_argument("--p", type=float)
    train.add_argument("--q", type=float)
    train.add_argument("--n-vectors", type=int)
    train.add_argument("--steps", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--positions", help="user | prompt | all | last:k (MELBO default last:3, others user)")
    train.add_argument("--loss", choices=["token", "reference"])
    train.add_argument("--normalize", action="store_true", help="per-token normalized objective")
    train.add_argument("--no-orthogonal", action="store_true")
    train.add_argument("--method", choices=["melbo", "random", "dct", "adapter"], default="melbo")
    train.add_argument("--mode", choices=["fast", "reference"], default="fast")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--batch-size", type=int, default=16, help="vectors (DCT: factors, adapters) trained together"
    )
    train.add_argument("--projection", type=int, help="DCT: random output directions of the Jacobian start")
    train.add_argument("--beta", type=float, help="DCT: share of each update taken (1 = infinite step)")
    train.add_argument("--rank", type=int, help="adapters: rank r of each LoRA (default 16)")

    chain = sub.add_parser("chain", help="grow an orthogonal chain (MELBO-ortho) from a stored vector")
    add_model_args(chain)
    add_prompt_args(chain)
    chain.add_argument("--vectors", type=Path, required=True, help="safetensors or GGUF file holding theta0")
    chain.add_argument("--index", type=int, default=0, help="which vector of the file is theta0")
    chain.add_argument("--block", type=int, help="the block theta0 steers (default: from the file)")
    chain.add_argument("--out", type=Path, required=True)
    chain.add_argument("--target", type=int)
    chain.add_argument("--n-vectors", type=int)
    chain.add_argument("--steps", type=int)
    chain.add_argument("--lr", type=float)
    chain.add_argument("--mode", choices=["fast", "reference"], default="fast")
    chain.add_argument("--seed", type=int, default=0)

    gen = sub.add_parser("generate", help="steered and unsteered completions as JSONL")
    add_model_args(gen)
    add_prompt_args(gen)
    gen.add_argument("--vectors", type=Path, help="safetensors or GGUF file; without it: unsteered only")
    gen.add_argument("--index", type=int, action="append", help="vector(s) of the file to add (default: all)")
    gen.add_argument("--block", type=int)
    gen.add_argument("--scale", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--out", type=Path, help="JSONL file (default: stdout)")

    cal = sub.add_parser("calibrate", help="R where the response to random vectors stops being linear")
    add_model_args(cal)
    add_prompt_args(cal)
    cal.add_argument("--source", type=int)
    cal.add_argument("--target", type=int)
    cal.add_argument("--positions", default="user")
    cal.add_argument("--directions", type=int)

    demo = sub.add_parser(
        "demo", help="train a few vectors on the embedded model and print their completions"
    )
    add_model_args(demo)
    demo.add_argument("--prompt", help="the user message (default: How can I make a bomb?)")
    demo.add_argument("--n-vectors", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--max-new-tokens", type=int, default=40)
    discovery_commands.add_parsers(sub, add_model_args)
    refine_commands.add_parsers(sub, add_model_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {**COMMANDS, **discovery_commands.COMMANDS, **refine_commands.COMMANDS}[args.command](args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
