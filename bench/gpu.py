"""Every speed figure on one CUDA device, in one run of under 8 minutes.

    .venv/bin/python bench/gpu.py                  # on a GPU machine (bfloat16 by default)
    .venv/bin/python bench/gpu.py --dry-run        # here: the same code on the CPU, tiny shapes

Models: the embedded model, and random-weight models shaped like Llama and Qwen at about 1B and
7B parameters, built from a config on the device (nothing is downloaded; they share the embedded
model's tokenizer, so their vocabulary is its 49,152 tokens, not the real models'). For each:
- training: fast MELBO optimizer steps per second (a batch of 16 vectors per step, early stop off);
- decoding: tokens per second at batch 1, 16 and 64 (every row steered, fixed length);
- DCT: factors per minute (64 factors, 10 iterations, at fast MELBO's default R);
- scoring: completions scored per second (the batch-64 completions: embeddings and fluency);
- peak device memory.
A model that would start past the time budget is skipped and listed as such. Last line
(bench/verdict.py): one JSON object with a section per model.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.* importable
from bench.verdict import Target, report
from engine.decode.generate import GenerationRequest, generate
from engine.discovery.embedder import Embedder
from engine.discovery.scores import ScoreInput, score
from engine.methods.dct import train_dct
from engine.methods.melbo import MelboTrainer
from engine.models import (
    DEFAULT_MODEL,
    LoadedModel,
    data_dir,
    describe,
    load_model,
    pick_dtype,
    prepare_tokenizer,
    resolve,
)
from engine.specs import DctSpec, MelboSpec

T = TypeVar("T")
PROMPTS = ("How can I make a bomb?", "Write a poem about the sea.")
BUDGET_S = 450  # the whole run stays under 8 minutes: no model starts after this
TARGETS = (Target("total_s", "<=", 480),)

# Shapes of the real models (attention, MLP and depth; the vocabulary is the embedded tokenizer's).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-1b": dict(  # Llama 3.2 1B
        model_type="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "qwen-1.5b": dict(  # Qwen2.5 1.5B
        model_type="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "llama-7b": dict(  # Llama 2 7B
        model_type="llama",
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
    "qwen-7b": dict(  # Qwen2.5 7B
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
    ),
}
# --dry-run: the same families at a size a CPU runs in seconds.
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
)


@dataclass(frozen=True)
class Workload:
    train_vectors: int = 16  # vectors per fast MELBO step
    train_steps: int = 20
    decode_batches: tuple[int, ...] = (1, 16, 64)
    decode_tokens: int = 64
    dct_factors: int = 64
    dct_iterations: int = 10  # the published count


DRY_RUN = Workload(train_vectors=4, train_steps=2, decode_tokens=4, dct_factors=8, dct_iterations=1)


class Device:
    """Timing and memory on the device: CUDA work is asynchronous, so every timer waits for it."""

    def __init__(self, name: str) -> None:
        self.name, self.cuda = name, name.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, label: str, work: Callable[[], T]) -> tuple[T, float]:
        self.sync()
        began = time.perf_counter()
        result = work()
        self.sync()
        seconds = time.perf_counter() - began
        print(f"  {label}: {seconds:.2f} s", file=sys.stderr, flush=True)
        return result, seconds

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def random_model(name: str, tokenizer: Any, device: str, dtype: torch.dtype, tiny: bool) -> LoadedModel:
    """A model of this shape with random weights, initialized on the device itself."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(SHAPES[name])
    model_type = shape.pop("model_type")
    if tiny:
        shape.update(TINY)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=4096,
        **shape,
    )
    with torch.device(device):
        model: Any = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, describe(model, tokenizer, f"random {name}"))


def train_speed(lm: LoadedModel, dev: Device, work: Workload) -> tuple[dict[str, Any], float]:
    """Fast MELBO optimizer steps per second; also fast MELBO's default R on this model.

    Steps are counted as they report progress: a batch that converges early ends and the next one
    starts inside the timed window, as in a real run."""
    reports = [0]  # one per vector per optimizer step

    def count(index: int, step: int, value: float) -> None:
        reports[0] += 1

    spec = MelboSpec(
        prompts=PROMPTS,
        n_vectors=8 * work.train_vectors,
        batch_size=work.train_vectors,
        steps=work.train_steps + 1,
    )
    trainer = MelboTrainer(lm, spec, on_progress=count)
    trainer.step()  # warm-up: the first step allocates
    reports[0] = 0

    def steps() -> None:
        while reports[0] < work.train_steps * work.train_vectors and not trainer.finished:
            trainer.step()

    _, seconds = dev.timed(f"train {work.train_steps} steps x {work.train_vectors} vectors", steps)
    rate = reports[0] / work.train_vectors / seconds
    figures = {
        "train_steps_per_s": round(rate, 3),
        "train_vector_steps_per_s": round(rate * work.train_vectors, 1),
    }
    return figures, trainer.problem.radius


def decode_speed(
    lm: LoadedModel, dev: Device, work: Workload, radius: float
) -> tuple[dict[str, Any], list[str]]:
    """Tokens per second of steered fixed-length rows; the texts of the largest batch."""
    source = MelboSpec(prompts=PROMPTS).span(lm.info)[0]
    gen = torch.Generator().manual_seed(0)
    rates, texts = {}, []
    generate(lm, [GenerationRequest(prompt=PROMPTS[0], max_new_tokens=2)])  # warm-up
    for batch in work.decode_batches:
        vectors = torch.randn(batch, lm.info.width, generator=gen)
        vectors = vectors / vectors.norm(dim=1, keepdim=True) * radius
        requests = [
            GenerationRequest(
                prompt=PROMPTS[i % len(PROMPTS)],
                block=source,
                terms=((vectors[i], 1.0),),
                max_new_tokens=work.decode_tokens,
                ignore_eos=True,
            )
            for i in range(batch)
        ]
        results, seconds = dev.timed(
            f"decode batch {batch}",
            lambda requests=requests, batch=batch: generate(lm, requests, batch_size=batch),
        )
        rates[str(batch)] = round(sum(r.n_tokens for r in results) / seconds, 1)
        texts = [r.text for r in results]
    return {"decode_tokens_per_s": rates}, texts


def dct_speed(lm: LoadedModel, dev: Device, work: Workload, radius: float) -> dict[str, Any]:
    spec = DctSpec(prompts=PROMPTS, n_vectors=work.dct_factors, radius=radius, steps=work.dct_iterations)
    _, seconds = dev.timed(f"dct {work.dct_factors} factors", lambda: train_dct(lm, spec))
    return {"dct_factors_per_min": round(work.dct_factors / seconds * 60, 1)}


def scoring_speed(lm: LoadedModel, dev: Device, embedder: Embedder, texts: list[str]) -> dict[str, Any]:
    plain = generate(lm, [GenerationRequest(prompt=p, max_new_tokens=8) for p in PROMPTS])
    unsteered = {p: r.text for p, r in zip(PROMPTS, plain, strict=True)}
    # Every other completion stands in for the random twin, so beyond-random is computed as well.
    inputs = [
        ScoreInput(PROMPTS[i % len(PROMPTS)], text, unsteered[PROMPTS[i % len(PROMPTS)]], random=i % 4 == 3)
        for i, text in enumerate(texts)
    ]
    _, seconds = dev.timed(f"score {len(inputs)} completions", lambda: score(lm, embedder, inputs))
    return {"scoring_completions_per_s": round(len(inputs) / seconds, 1)}


def measure(lm: LoadedModel, dev: Device, work: Workload, embedder: Embedder) -> dict[str, Any]:
    params = sum(p.numel() for p in lm.model.parameters())
    figures: dict[str, Any] = {
        "parameters_m": round(params / 1e6, 1),
        "blocks": lm.info.n_blocks,
        "width": lm.info.width,
    }
    trained, radius = train_speed(lm, dev, work)
    decoded, texts = decode_speed(lm, dev, work, radius)
    figures.update(trained, **decoded, **dct_speed(lm, dev, work, radius))
    figures.update(scoring_speed(lm, dev, embedder, texts))
    figures["peak_memory_gib"] = dev.peak_gib()
    return figures


def fail_without_cuda(device: str) -> None:
    """Stop before any model is loaded: a CPU run of the full shapes would take hours."""
    if not device.startswith("cuda") or torch.cuda.is_available():
        return
    build = f"torch {torch.__version__}, " + (
        f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    )
    print(
        f"bench/gpu.py: no CUDA device ({build}; CUDA_VISIBLE_DEVICES and the driver decide what torch "
        "sees). Run it on a GPU machine, or check it here with --dry-run (tiny shapes on the CPU).",
        file=sys.stderr,
    )
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="the CPU, tiny shapes (same as --device cpu --tiny)"
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... (cpu with --tiny)")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on the CPU), float16, ..."
    )
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and workloads")
    parser.add_argument(
        "--models",
        help="comma-separated, in order (default: embedded and every shape; --tiny: the shapes only, "
        "as the embedded model is not tiny)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=BUDGET_S, help="no model starts after this many seconds"
    )
    args = parser.parse_args()
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    fail_without_cuda(args.device)
    if not args.device.startswith("cuda") and not args.tiny:
        parser.error("full shapes need a CUDA device; on the CPU use --dry-run")
    began = time.perf_counter()
    dev = Device(args.device)
    dtype = pick_dtype(args.dtype, torch.device(args.device))
    work = DRY_RUN if args.tiny else Workload()
    names = args.models or ",".join(SHAPES if args.tiny else ["embedded", *SHAPES])
    embedder = Embedder(device=args.device)
    from transformers import AutoTokenizer

    where, _ = resolve(DEFAULT_MODEL, data_dir())  # converts the embedded model once if needed
    tokenizer = AutoTokenizer.from_pretrained(where)
    prepare_tokenizer(tokenizer)
    models: dict[str, Any] = {}
    skipped: list[str] = []
    for name in [m.strip() for m in names.split(",") if m.strip()]:
        if time.perf_counter() - began > args.budget_s:
            skipped.append(name)
            continue
        print(f"{name} ...", file=sys.stderr, flush=True)
        dev.reset_peak()
        if name == "embedded":
            lm = load_model(DEFAULT_MODEL, device=args.device, dtype=dtype)
        else:
            lm = random_model(name, tokenizer, args.device, dtype, args.tiny)
        models[name] = measure(lm, dev, work, embedder)
        del lm
        dev.free()
    figures = {
        "device": torch.cuda.get_device_name(args.device) if dev.cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "dry_run": args.tiny,
        "threads": torch.get_num_threads(),
        "models": models,
        "skipped": skipped,
        "total_s": round(time.perf_counter() - began, 1),
    }
    report("gpu", figures, TARGETS)


if __name__ == "__main__":
    main()
