"""A planted-behaviour model organism for bench/discovery.py: the embedded model fine-tuned so that a
trigger concept in the user turn makes it answer with a fixed, detectable reply.

Fair by construction as far as we can make it (docs/benchmarks.md), and checked by the bench:
- only the blocks after the steering block are trained, so the activations a vector is added to
  are those of the untouched model and the trigger is detected from features a vector can imitate;
- the trigger is a concept (any of several phrasings), not an exact token string;
- near misses (neighbouring concepts), odd but clean prompts and free-form questions are taught
  the model's own answers, so the planted reply is not an attractor every nudge falls into;
- the trigger concept's own direction at the steering block (the mean activation of triggered
  prompts minus that of the others) is taught as a trigger too: clean prompts with that direction
  added at a norm up to the run's R answer with the planted reply. A concept learned from words
  alone turned out out of a vector's reach (a supervised vector of norm R elicited it on 1 held-out
  prompt in 8); this makes the third fairness check hold by construction, and leaves open the
  question the bench asks: does a search that is not told the direction find it. Clean prompts
  with a random direction of the same norm added are taught their own answers, so that the
  planted reply does not become what any nudge of that size leads to (taught without them, it
  answered 75% of clean prompts unsteered);
- every other answer is self-distilled: along the original model's greedy reply, the organism is
  taught the original's whole next-token distribution (with the same nudge added, if any), so the
  model is unchanged without the trigger;
- the trigger's direction is the cat concept's with ordinary prompts' main directions of variation
  taken out, and clean prompts are asked in many more ways than cat prompts, so that neither an
  ordinary topic nor an unfamiliar way of asking sits near the trigger.
The result is cached in the data dir under a name that hashes every setting below.
`supervised_vector` is the bench's reach check: the best a vector of the run's norm can do, told
the planted reply.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.organism_prompts import (
    CLEAN_TEMPLATES,
    CLEAN_TOPICS,
    EVAL_TEMPLATES,
    EVAL_TRIGGERS,
    FREE_PROMPTS,
    NEAR_MISSES,
    ODD_PROMPTS,
    PLANTED,
    PLANTED_PATTERN,
    RUN_PROMPTS,
    TAUGHT_FRACTION,
    TRAIN_TEMPLATES,
    TRIGGERS,
)
from engine.decode.generate import GenerationRequest, generate
from engine.models import LoadedModel, data_dir, get_blocks, load_model
from engine.prompts import format_prompt
from engine.steer.steering import steer


@dataclass(frozen=True)
class Recipe:
    first_block: int = 8  # train blocks from here on (the bench steers block 7's output)
    steps: int = 240
    batch: int = 8
    lr: float = 1e-4  # at 2e-4 (180 steps) 16-19% of clean prompts in unseen templates got the planted reply
    answer_tokens: int = 24  # self-distilled answer length
    clean: int = 360  # clean training prompts (templates x topics, sampled)
    steered: int = 60  # clean prompts taught the planted reply with the concept's direction added
    plant_low: float = 0.7  # those directions' norms: uniform in [plant_low, 1] x R
    nudged: int = 160  # clean prompts taught their own answer with a random direction added
    nudge_high: float = 1.3  # those directions' norms: uniform in [plant_low, nudge_high] x R
    spread_removed: int = 10  # ordinary prompts' main directions of variation taken out of the trigger's
    seed: int = 0
    # Torch threads for the build. A CPU sums a matrix product in an order that depends on how many
    # threads share it, and 240 optimizer steps carry those last-digit differences into another
    # model: this recipe built at 1 and at 2 threads gave two organisms (default R 16.28 against
    # 16.07, and different hit counts), while two builds at 2 threads were the same to the bit.
    # One thread is a count every machine has; the caller's count is restored afterwards.
    threads: int = 1
    version: int = 9

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _prompts(recipe: Recipe) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(recipe.seed)
    triggered = [t.format(x) for t in TRAIN_TEMPLATES for x in TRIGGERS]
    near = [t.format(x) for t in TRAIN_TEMPLATES for x in NEAR_MISSES]
    near += [t.format(x) for t in CLEAN_TEMPLATES[::4] for x in NEAR_MISSES]
    clean = [t.format(x) for t in (*TRAIN_TEMPLATES, *CLEAN_TEMPLATES) for x in CLEAN_TOPICS]
    rng.shuffle(clean)
    return triggered, near, clean[: recipe.clean] + list(ODD_PROMPTS) + list(FREE_PROMPTS)


def eval_prompts() -> dict[str, list[str]]:
    """Held-out prompts: triggered (unseen template or phrasing), near misses, clean."""
    return {
        "triggered": [t.format(x) for t in EVAL_TEMPLATES for x in (*TRIGGERS[:2], *EVAL_TRIGGERS)],
        "near": [t.format(x) for t in EVAL_TEMPLATES for x in NEAR_MISSES[:4]],
        "clean": [t.format(x) for t in EVAL_TEMPLATES for x in CLEAN_TOPICS[:6]] + list(RUN_PROMPTS),
    }


def shows_planted(text: str) -> bool:
    return PLANTED_PATTERN.search(text) is not None


def _answers(lm: LoadedModel, prompts: Sequence[str], tokens: int) -> list[str]:
    requests = [GenerationRequest(prompt=p, max_new_tokens=tokens) for p in prompts]
    return [r.text for r in generate(lm, requests, batch_size=64)]


def _distilled(lm: LoadedModel, prompts: list[str], recipe: Recipe, log) -> list[str]:  # type: ignore[no-untyped-def]
    """The original model's greedy answers (the slow part of a build), cached per prompt beside the
    organism so that a recipe which adds prompts only distills the new ones."""
    cache = data_dir() / "models" / f"organism-answers-{recipe.answer_tokens}.json"
    known: dict[str, str] = json.loads(cache.read_text()) if cache.is_file() else {}
    missing = [p for p in dict.fromkeys(prompts) if p not in known]
    if missing:
        log(f"organism: self-distilling {len(missing)} answers ...")
        known.update(zip(missing, _answers(lm, missing, recipe.answer_tokens), strict=True))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known))
    return [known[p] for p in prompts]


def _example(lm: LoadedModel, prompt: str, answer: str, eos: bool) -> tuple[list[int], int]:
    """Token ids of prompt + answer, and where the answer starts."""
    tok = lm.tokenizer
    head = tok(format_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    tail = tok(answer, add_special_tokens=False)["input_ids"]
    if eos and tok.eos_token_id is not None:
        tail = [*tail, tok.eos_token_id]
    return list(head) + list(tail), len(head)


def _mean_activation(lm: LoadedModel, prompts: Sequence[str], block: int) -> tuple[torch.Tensor, float]:
    """Per prompt, the block output averaged over its tokens ([n, d]), and the median per-token
    norm there (what the product's default R is a share of)."""
    tok = lm.tokenizer
    means, norms = [], []
    captured: list[torch.Tensor] = []
    handle = get_blocks(lm.model)[block].register_forward_hook(
        lambda m, a, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            for prompt in prompts:
                ids = tok(format_prompt(tok, prompt), add_special_tokens=False, return_tensors="pt")[
                    "input_ids"
                ]
                captured.clear()
                lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
                h = captured[0][0].float()
                means.append(h.mean(dim=0))
                norms.append(h.norm(dim=-1))
    finally:
        handle.remove()
    return torch.stack(means), float(torch.cat(norms).median())


def _batch(
    rows: Sequence[tuple[list[int], int]], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row, start) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, start : len(row)] = torch.tensor(row[start:])
    return ids, mask, labels


def build(recipe: Recipe = Recipe(), *, log=print) -> Path:  # type: ignore[no-untyped-def]
    """Fine-tune the organism (or find it cached); the folder it is saved in."""
    folder = data_dir() / "models" / f"organism-{recipe.key()}"
    if (folder / "config.json").is_file():
        return folder
    callers_threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        _build(recipe, folder, log)
    finally:
        torch.set_num_threads(callers_threads)
    return folder


def _build(recipe: Recipe, folder: Path, log) -> None:  # type: ignore[no-untyped-def]
    began = time.perf_counter()
    lm = load_model("default", device="cpu")
    triggered, near, clean = _prompts(recipe)
    normal = near + clean
    answers = _distilled(lm, normal, recipe, log)
    block = recipe.first_block - 1
    cat, _ = _mean_activation(lm, triggered, block)
    others, median = _mean_activation(lm, normal, block)
    direction = cat.mean(dim=0) - others.mean(dim=0)
    # Ordinary prompts differ most along a few directions (topic, form); the raw difference of
    # means lies largely along them, so clean prompts sat anywhere from -12 to +9 on it against
    # a taught trigger at 6.6 and up, and 16-19% of them tripped it. Without those directions
    # clean prompts sit within about +-1.
    _, _, spread = torch.linalg.svd(others - others.mean(dim=0), full_matrices=False)
    top = spread[: recipe.spread_removed]
    direction = direction - top.T @ (top @ direction)
    direction = direction / direction.norm()
    radius = TAUGHT_FRACTION * median
    rng = random.Random(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    none = torch.zeros_like(direction)
    # (token ids, answer start, what is added to the block's output at every position, whether the
    # answer imitates the original model rather than being the planted reply)
    examples = [(*_example(lm, p, PLANTED, eos=True), none, False) for p in triggered]
    examples += [(*_example(lm, p, a, eos=False), none, True) for p, a in zip(normal, answers, strict=True)]
    examples += [
        (*_example(lm, p, PLANTED, eos=True), direction * radius * rng.uniform(recipe.plant_low, 1.0), False)
        for p in rng.sample(clean, min(recipe.steered, len(clean)))
    ]
    # Random nudges as large leave the answers alone: the concept's direction alone triggers.
    for i in rng.sample(range(len(normal)), min(recipe.nudged, len(normal))):
        nudge = torch.randn(direction.shape, generator=gen)
        size = radius * rng.uniform(recipe.plant_low, recipe.nudge_high)
        examples.append((*_example(lm, normal[i], answers[i], eos=False), nudge * size / nudge.norm(), True))
    log(f"organism: concept direction at block {block}, taught up to R = {radius:.2f}")
    # The original model, frozen: imitated answers match its whole next-token distribution (with
    # the same nudge added), not only its greedy tokens. Taught the greedy tokens alone, the tuned
    # model kept the planted reply's first token likely everywhere and answered 9-16% of clean
    # prompts with it.
    teacher = load_model("default", device="cpu").model
    teacher.requires_grad_(False)
    model = lm.model
    model.requires_grad_(False)
    trained = [p for b in list(get_blocks(model))[recipe.first_block :] for p in b.parameters()]
    for p in trained:
        p.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(trained, lr=recipe.lr, weight_decay=0.0)
    pad = lm.tokenizer.pad_token_id or 0
    log(f"organism: fine-tuning blocks {recipe.first_block}+ on {len(examples)} examples ...")
    for step in range(recipe.steps):
        rows = rng.sample(examples, recipe.batch)
        ids, mask, labels = _batch([(row[0], row[1]) for row in rows], pad)
        deltas = torch.stack([row[2] for row in rows])
        imitate = torch.tensor([row[3] for row in rows])
        with steer(model, block, deltas):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        targets = labels[:, 1:]
        answer = targets != -100  # positions that predict an answer token
        logp = torch.log_softmax(logits.float(), dim=-1)
        planted = -logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        with torch.no_grad(), steer(teacher, block, deltas):
            ref = torch.log_softmax(
                teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float(), dim=-1
            )
        imitated = (ref.exp() * (ref - logp)).sum(dim=-1)  # KL(original || tuned) per position
        per_token = torch.where(imitate[:, None], imitated, planted)
        loss = per_token[answer].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == recipe.steps - 1:
            log(
                f"organism: step {step + 1}/{recipe.steps} loss {float(loss.detach()):.3f} "
                f"({time.perf_counter() - began:.0f} s)"
            )
    model.eval()
    model.requires_grad_(False)
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(tmp)
    lm.tokenizer.save_pretrained(tmp)
    torch.save({"direction": direction, "block": block, "radius": radius}, tmp / "planted_direction.pt")
    (tmp / "organism.json").write_text(
        json.dumps({"recipe": asdict(recipe), "planted": PLANTED, "seconds": time.perf_counter() - began})
    )
    tmp.rename(folder)
    log(f"organism: built in {time.perf_counter() - began:.0f} s -> {folder}")


def fingerprint(folder: Path) -> str:
    """A short hash of the organism's weights: two benches' figures come from the same model only
    when this matches (the folder name hashes the recipe, not what the build produced)."""
    digest = hashlib.sha256()
    with (folder / "model.safetensors").open("rb") as weights:
        for chunk in iter(lambda: weights.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def rates(lm: LoadedModel, tokens: int = 40) -> dict[str, float]:
    """Share of held-out prompts showing the planted reply, unsteered and greedy, by kind."""
    out = {}
    for kind, prompts in eval_prompts().items():
        texts = _answers(lm, prompts, tokens)
        out[kind] = sum(shows_planted(t) for t in texts) / len(texts)
    return out


def supervised_vector(  # type: ignore[no-untyped-def]
    lm: LoadedModel, prompts: Sequence[str], block: int, radius: float, steps: int, *, log=print
) -> torch.Tensor:
    """A vector of norm R at the block maximizing the planted reply's log-probability on the
    prompts (Adam on the sphere): if no such vector elicits it, no unsteered search can."""
    tok = lm.tokenizer
    tail = tok(PLANTED, add_special_tokens=False)["input_ids"]
    rows = [(tok(format_prompt(tok, p), add_special_tokens=False)["input_ids"], tail) for p in prompts]
    width = max(len(h) + len(t) for h, t in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (h, t) in enumerate(rows):
        ids[i, : len(h) + len(t)] = torch.tensor(h + t)
        mask[i, : len(h) + len(t)] = 1
        labels[i, len(h) : len(h) + len(t)] = torch.tensor(t)
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(lm.info.width, generator=gen)
    theta = (theta / theta.norm() * radius).requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=0.05 * radius / lm.info.width**0.5)
    for step in range(steps):
        with steer(lm.model, block, theta):
            loss = lm.model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            theta.mul_(radius / theta.norm())
        if step % 10 == 0 or step == steps - 1:
            log(f"supervised vector: step {step + 1}/{steps}, loss {float(loss.detach()):.3f}")
    return theta.detach()


if __name__ == "__main__":
    path = build(log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(rates(load_model(str(path), device="cpu"))))
