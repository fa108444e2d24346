"""What each `python -m engine` command does; the argument parser lives in engine/cli/main.py."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from engine.errors import EngineError
from engine.models import LoadedModel, load_model
from engine.progress import Progress

DEMO_PROMPT = "How can I make a bomb?"


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="default", help="'default' (embedded SmolLM2), a folder or a cached hub id"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16"
    )


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", action="append", default=[], help="a user message (repeat for several)")
    p.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += [line for line in args.prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise EngineError("give at least one --prompt or a --prompts-file")
    return prompts


def _load(args: argparse.Namespace) -> LoadedModel:
    return load_model(args.model, device=args.device, dtype=args.dtype)


class _Bar:
    """A tqdm bar fed by the engine's (index, step, value) progress callbacks."""

    def __init__(self, total: int, unit: str) -> None:
        self.bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)
        self.last: dict[int, int] = {}

    def __call__(self, index: int, step: int, value: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(vector=index, step=step, value=f"{value:.4g}", refresh=False)

    def close(self) -> None:
        self.bar.n = self.bar.total  # early stops leave steps unused
        self.bar.refresh()
        self.bar.close()


def _write_jsonl(path: Path | None, rows: Sequence[dict[str, Any]]) -> None:
    if path is None:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _samples(
    lm: LoadedModel,
    prompts: Sequence[str],
    block: int,
    vectors: torch.Tensor,
    scale: float,
    tokens: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Greedy completions of every prompt, unsteered (vector None) and with each vector."""
    from engine.decode.generate import GenerationRequest, generate

    rows: list[tuple[int | None, str]] = [(None, p) for p in prompts]
    rows += [(i, p) for i in range(len(vectors)) for p in prompts]
    requests = [
        GenerationRequest(
            prompt=p,
            block=block,
            terms=() if i is None else ((vectors[i], scale),),
            seed=seed,
            max_new_tokens=tokens,
        )
        for i, p in rows
    ]
    results = generate(lm, requests)
    return [
        {
            "vector": i,
            "scale": None if i is None else scale,
            "prompt": p,
            "text": r.text,
            "tokens": r.n_tokens,
        }
        for (i, p), r in zip(rows, results, strict=True)
    ]


def cmd_train(args: argparse.Namespace) -> None:
    from engine.methods.melbo import step_budget, train_melbo
    from engine.specs import MelboSpec
    from engine.vectors import save_vectors

    if args.method == "dct":
        return _train_dct(args)
    if args.method == "adapter":
        return _train_adapters(args)
    lm = _load(args)
    fields = ("source", "target", "radius", "p", "q", "n_vectors", "steps", "lr", "positions", "loss")
    options = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    spec = MelboSpec.from_dict(
        dict(
            options,
            prompts=_prompts(args),
            model=args.model,
            normalize=args.normalize,
            orthogonal=not args.no_orthogonal,
            method=args.method,
            mode=args.mode,
            seed=args.seed,
            batch_size=args.batch_size,
        )
    )
    bar = _Bar(spec.n_vectors * max(step_budget(spec), 1), "step")
    result = train_melbo(lm, spec, on_progress=bar)
    bar.close()
    metadata = {
        "model": args.model,
        "architecture": lm.info.architecture,
        "block": result.source,
        "target": result.target,
        "radius": result.radius,
        "residual_norm": result.residual_norm,
        "method": f"{spec.method}/{spec.mode}",
        "seed": spec.seed,
        "spec": spec.to_dict(),
        "records": [r.to_dict() for r in result.records],
    }
    save_vectors(args.out, result.vectors, metadata)
    print(f"saved {len(result.vectors)} vectors (R={result.radius:.3g}, block {result.source}) to {args.out}")
    for r in result.records:
        print(
            f"  vector {r.index}: objective {r.objective:.4g}, steps {r.steps}, "
            f"cos(start) {r.start_cosine:.2f}"
        )
    if args.samples:
        rows = _samples(lm, spec.prompts, result.source, result.vectors, 1.0, args.max_new_tokens, spec.seed)
        _write_jsonl(args.samples, rows)
        print(f"wrote {len(rows)} completions to {args.samples}")


def _options(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {f: getattr(args, f) for f in names if getattr(args, f, None) is not None}


def _train_dct(args: argparse.Namespace) -> None:
    """DCT: the factors' steering vectors by α² (largest first), in one safetensors file."""
    from engine.methods.dct import train_dct
    from engine.specs import DctSpec
    from engine.vectors import save_vectors

    lm = _load(args)
    fields = ("source", "target", "radius", "n_vectors", "steps", "positions", "projection", "beta")
    spec = DctSpec.from_dict(
        dict(
            _options(args, fields),
            prompts=_prompts(args),
            model=args.model,
            seed=args.seed,
            batch_size=args.batch_size,
        )
    )
    bar = tqdm(total=0, unit="unit", file=sys.stderr, dynamic_ncols=True)

    def progress(phase: str, p: Progress) -> None:
        bar.total = p.budget
        bar.n = p.budget if p.done else p.step
        bar.set_postfix(phase=phase, refresh=True)

    result = train_dct(lm, spec, on_progress=progress)
    bar.close()
    metadata = {
        "model": args.model,
        "architecture": lm.info.architecture,
        "block": result.source,
        "target": result.target,
        "radius": result.radius,
        "residual_norm": result.residual_norm,
        "method": "dct",
        "seed": spec.seed,
        "spec": spec.to_dict(),
        "calibration": result.calibration,
        "records": [r.to_dict() for r in result.records],
    }
    save_vectors(args.out, result.vectors, metadata)
    print(
        f"saved {len(result.vectors)} DCT vectors (R={result.radius:.3g}, block {result.source}) "
        f"to {args.out}"
    )
    for r in result.records:
        print(
            f"  vector {r.index}: alpha {r.alpha:.4g}, effect {r.objective:.4g}, "
            f"cos(start) {r.start_cosine:.2f}"
        )
    if args.samples:
        rows = _samples(lm, spec.prompts, result.source, result.vectors, 1.0, args.max_new_tokens, spec.seed)
        _write_jsonl(args.samples, rows)
        print(f"wrote {len(rows)} completions to {args.samples}")


def _train_adapters(args: argparse.Namespace) -> None:
    """Steering adapters, each written as a PEFT LoRA folder: OUT/adapter_<i>/."""
    from engine.methods.adapter_trainer import AdapterTrainer
    from engine.methods.adapters import export_peft
    from engine.specs import AdapterSpec

    lm = _load(args)
    fields = ("source", "target", "radius", "p", "q", "n_vectors", "steps", "lr", "positions", "loss", "rank")
    spec = AdapterSpec.from_dict(
        dict(
            _options(args, fields),
            prompts=_prompts(args),
            model=args.model,
            normalize=args.normalize,
            seed=args.seed,
            batch_size=args.batch_size,
        )
    )
    trainer = AdapterTrainer(lm, spec)
    bar = tqdm(total=spec.n_vectors, unit="adapter", file=sys.stderr, dynamic_ncols=True)
    while not trainer.finished:
        bar.update(len(trainer.step()))
    bar.close()
    result = trainer.result()
    for adapter, record in zip(result.adapters, result.records, strict=True):
        meta = {
            "method": "adapter",
            "index": record.index,
            "spec": spec.to_dict(),
            "record": record.to_dict(),
        }
        folder = export_peft(
            args.out / f"adapter_{record.index}", lm.model, adapter, base_model=args.model, meta=meta
        )
        print(f"  adapter {record.index}: objective {record.objective:.4g}, steps {record.steps} -> {folder}")
    print(
        f"saved {len(result.adapters)} adapters (rank {spec.rank}, R={result.radius:.3g}, "
        f"block {result.source})"
    )


def cmd_chain(args: argparse.Namespace) -> None:
    from engine.methods.chains import train_chain
    from engine.specs import ChainSpec
    from engine.vectors import load_any, save_vectors

    lm = _load(args)
    source = load_any(args.vectors, expected_width=lm.info.width)
    if not 0 <= args.index < len(source.vectors):
        raise EngineError(f"--index {args.index}: the file holds vectors 0..{len(source.vectors) - 1}")
    block = args.block if args.block is not None else _block_of(source)
    options = {
        f: getattr(args, f) for f in ("target", "steps", "lr", "n_vectors") if getattr(args, f) is not None
    }
    spec = ChainSpec.from_dict(
        dict(options, prompts=_prompts(args), source=block, mode=args.mode, seed=args.seed)
    )
    bar = _Bar(spec.n_vectors * (spec.steps or 1000), "step")
    result = train_chain(lm, spec, source.vectors[args.index], on_progress=bar)
    bar.close()
    metadata = {"model": args.model, "block": block, "method": f"chain/{spec.mode}", "spec": spec.to_dict()}
    metadata["chain"] = result.to_dict()
    save_vectors(args.out, result.vectors, metadata)
    print(f"saved {len(result.vectors)} chain vectors to {args.out} (stopped: {result.stop_reason})")


def _block_of(file: Any) -> int:
    if file.blocks:
        return int(file.blocks[0])
    if isinstance(file.metadata.get("block"), int):
        return int(file.metadata["block"])
    raise EngineError("the vector file does not say which block it steers: pass --block")


def cmd_generate(args: argparse.Namespace) -> None:
    from engine.decode.generate import GenerationRequest, generate
    from engine.vectors import load_any

    lm = _load(args)
    terms: tuple[tuple[torch.Tensor, float], ...] = ()
    block = args.block
    if args.vectors:
        file = load_any(args.vectors, expected_width=lm.info.width)
        block = args.block if args.block is not None else _block_of(file)
        indices = args.index or list(range(len(file.vectors)))
        terms = tuple((file.vectors[i], args.scale) for i in indices)
    requests = [
        GenerationRequest(
            prompt=p,
            block=block,
            terms=terms if steered else (),
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
        )
        for p in _prompts(args)
        for steered in ((False, True) if terms else (False,))
    ]
    results = generate(lm, requests)
    rows = [
        {
            "prompt": r.prompt,
            "steered": bool(r.terms),
            "scale": args.scale if r.terms else 0.0,
            "text": out.text,
        }
        for r, out in zip(requests, results, strict=True)
    ]
    _write_jsonl(args.out, rows)


def cmd_calibrate(args: argparse.Namespace) -> None:
    from engine.methods.calibrate import calibrate
    from engine.specs import CalibrateSpec

    lm = _load(args)
    options = {
        f: getattr(args, f) for f in ("source", "target", "directions") if getattr(args, f) is not None
    }
    spec = CalibrateSpec.from_dict(dict(options, prompts=_prompts(args), positions=args.positions))
    result = calibrate(lm, spec)
    print(json.dumps(result.to_dict()))


def cmd_demo(args: argparse.Namespace) -> None:
    """A few vectors trained with the defaults; each completion next to the unsteered one."""
    from engine.methods.melbo import step_budget, train_melbo
    from engine.specs import MelboSpec

    print("loading the embedded model (the first run converts it once, ~15 s) ...", flush=True)
    lm = _load(args)
    spec = MelboSpec(prompts=(args.prompt or DEMO_PROMPT,), n_vectors=args.n_vectors, seed=args.seed)
    began = time.perf_counter()
    bar = _Bar(spec.n_vectors * step_budget(spec), "step")
    result = train_melbo(lm, spec, on_progress=bar)
    bar.close()
    print(
        f"trained {len(result.vectors)} vectors at block {result.source} -> hidden_states[{result.target}], "
        f"R = {result.radius:.2f} ({result.radius / result.residual_norm:.3f} of the residual norm) "
        f"in {time.perf_counter() - began:.0f} s\n"
    )
    rows = _samples(lm, spec.prompts, result.source, result.vectors, 1.0, args.max_new_tokens, spec.seed)
    width = 100
    for row in rows:
        title = "unsteered" if row["vector"] is None else f"vector {row['vector']}"
        if row["vector"] is not None:
            title += f"  (objective {result.records[row['vector']].objective:.4g})"
        print(f"── {title} " + "─" * max(0, width - len(title) - 4))
        print(row["text"].strip() + "\n")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "train": cmd_train,
    "chain": cmd_chain,
    "generate": cmd_generate,
    "calibrate": cmd_calibrate,
    "demo": cmd_demo,
}
