"""A text corpus per model (prompts and the model's own greedy answers), its residuals at a block
stored on disk, and the projection of every stored token on a direction.

Layout, under the data dir the caller passes:

    <data>/corpus/<model>-<fingerprint>/        one folder per model (its weights fingerprinted)
        <kind>-<hash>/                          a shard: one set of prompts, answered once
            documents.json                      prompts, answers, token ids, stored spans
            block-<s>.npy                       float16 [N, d] residuals, block s's output
            block-<s>-sum.npy                   float64 [d] their sum (the corpus mean's share)

A document is a prompt rendered with the chat template, then its answer. Stored positions run
from the user turn's first token to the answer's last: the chat template's shared preamble (the
same for every prompt) and position 0 (an attention sink whose norm is ~100x the others') are
left out. The residual stored at a position is block s's output there, `hidden_states[s + 1]`,
where a vector at block s is added. A block's file is built the first time that block is asked
for; a shard is shared by every corpus that names the same prompts (the bank by all of them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Generator, Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from engine.decode.decoder import Decoder
from engine.decode.request import GenerationRequest, GenerationResult
from engine.discovery.bank import BANK_VERSION, bank_prompts
from engine.errors import EngineError
from engine.models import LoadedModel
from engine.prompts import encode_prompts
from engine.steer.capture import sequence_outputs

FORMAT = 1
ANSWER_TOKENS = 64  # greedy tokens per answer: with the bank, ~100k stored tokens on the embedded model
ANSWER_ROWS = 64  # rows decoded together while answering
FORWARD_TOKENS = 4096  # padded tokens per forward while storing residuals
FLOAT16_MAX = 65504.0  # larger residual entries are clipped when stored

# Units for a compute loop: (phase, done, total), phase "answering" (one decode step: done counts
# answers) or "residuals" (one forward batch: done counts documents).
CorpusSteps = Generator[tuple[str, int, int], None, "Corpus"]


@dataclass(frozen=True)
class Document:
    prompt: str
    kind: str  # "bank", "given" or a caller's label
    label: str  # the bank's topic, or ""
    ids: tuple[int, ...]  # what the model reads: the rendered prompt, then the answer
    first: int  # first stored position (the user turn's first token, never 0)
    answer: int  # where the answer starts in ids
    completion: str

    @property
    def stored(self) -> int:
        return len(self.ids) - self.first


@dataclass(frozen=True)
class Part:
    """Prompts answered and stored together (one shard)."""

    kind: str
    prompts: tuple[str, ...]
    labels: tuple[str, ...] = ()  # one per prompt, or none

    def key(self, max_new_tokens: int) -> str:
        text = json.dumps([FORMAT, BANK_VERSION, self.kind, self.prompts, self.labels, max_new_tokens])
        slug = re.sub(r"[^a-z0-9]+", "-", self.kind.lower()).strip("-")[:24] or "part"
        return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def bank_part(limit: int | None = None) -> Part:
    rows = bank_prompts(limit)
    return Part("bank", tuple(r.text for r in rows), tuple(r.topic for r in rows))


def model_folder(data: Path, lm: LoadedModel) -> Path:
    """The corpus folder of this model: its name, and a fingerprint of its weights (every
    parameter tensor, read at about 4,096 evenly spaced entries) so that a model fine-tuned and
    saved under an old name never reads another's residuals."""
    digest = hashlib.sha256(json.dumps([lm.info.name, lm.info.architecture, lm.info.width]).encode())
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].double()
            digest.update(name.encode())
            digest.update(np.array([float(sample.sum()), float(sample.abs().sum())]).tobytes())
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", Path(lm.info.name).name).strip("-")[:40] or "model"
    return data / "corpus" / f"{slug}-{digest.hexdigest()[:12]}"


def _encode(lm: LoadedModel, prompt: str) -> tuple[list[int], int]:
    """The rendered prompt's token ids (as generation reads them) and its first user-turn token."""
    batch = encode_prompts(lm.tokenizer, [prompt])
    ids = [int(i) for i in batch.input_ids[0]]
    user = batch.user_mask[0].nonzero()
    first = int(user[0]) if len(user) and not batch.unmatched else 0
    return ids, max(first, 1)


def answer_steps(
    lm: LoadedModel, part: Part, max_new_tokens: int, rows: int = ANSWER_ROWS
) -> Generator[tuple[str, int, int], None, list[Document]]:
    """The part's prompts answered greedily, one decode step per unit; its documents. With
    max_new_tokens 0 nothing is decoded: the documents are the prompts alone."""
    encoded = [_encode(lm, p) for p in part.prompts]
    results: dict[Hashable, GenerationResult] = {}
    if max_new_tokens > 0:
        decoder = Decoder(lm, max_rows=rows)
        for i in sorted(range(len(part.prompts)), key=lambda i: len(encoded[i][0])):
            decoder.add(i, GenerationRequest(prompt=part.prompts[i], max_new_tokens=max_new_tokens))
        while decoder:
            results.update(decoder.step().finished)
            yield "answering", len(results), len(part.prompts)
    documents = []
    for i, prompt in enumerate(part.prompts):
        ids, first = encoded[i]
        r = results.get(i)
        tokens, text = (r.token_ids, r.text) if r is not None else ((), "")
        label = part.labels[i] if part.labels else ""
        documents.append(Document(prompt, part.kind, label, (*ids, *tokens), first, len(ids), text))
    return documents


def _replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)  # readers see a finished file or none


def residual_steps(
    lm: LoadedModel, documents: Sequence[Document], block: int, folder: Path
) -> Generator[tuple[str, int, int], None, None]:
    """Block `block`'s output at every stored position, written to folder/block-<s>.npy."""
    n = sum(d.stored for d in documents)
    starts = np.cumsum([0, *(d.stored for d in documents)])
    tmp = folder / f"block-{block}.npy.partial-{os.getpid()}"
    store = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, lm.info.width))
    total = torch.zeros(lm.info.width, dtype=torch.float64)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(documents)), key=lambda i: len(documents[i].ids))
    done = 0
    while done < len(order):
        batch = [order[done]]
        # Sorted by length: the next document is the longest so far, so it sets the padded width.
        while done + len(batch) < len(order):
            longest = len(documents[order[done + len(batch)]].ids)
            if longest * (len(batch) + 1) > FORWARD_TOKENS:
                break
            batch.append(order[done + len(batch)])
        outputs = sequence_outputs(lm.model, block, [documents[i].ids for i in batch], pad)
        for i, out in zip(batch, outputs, strict=True):
            kept = out[documents[i].first :]  # [stored, d]
            total += kept.double().sum(dim=0)
            store[starts[i] : starts[i + 1]] = kept.clamp(-FLOAT16_MAX, FLOAT16_MAX).numpy()
        done += len(batch)
        yield "residuals", done, len(documents)
    store.flush()
    del store
    sum_tmp = folder / f"block-{block}-sum.npy.partial-{os.getpid()}.npy"
    np.save(sum_tmp, total.numpy())
    _replace(sum_tmp, folder / f"block-{block}-sum.npy")
    _replace(tmp, folder / f"block-{block}.npy")


def _load_documents(path: Path) -> list[Document]:
    data = json.loads(path.read_text())
    return [Document(**{**d, "ids": tuple(d["ids"])}) for d in data["documents"]]


def shard_steps(
    lm: LoadedModel, root: Path, part: Part, block: int, max_new_tokens: int
) -> Generator[tuple[str, int, int], None, tuple[list[Document], Path]]:
    """A shard's documents (answered now if new) and its residuals at `block` (stored now if new)."""
    folder = root / part.key(max_new_tokens)
    path = folder / "documents.json"
    if path.is_file():
        documents = _load_documents(path)
    else:
        documents = yield from answer_steps(lm, part, max_new_tokens)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"documents.json.partial-{os.getpid()}"
        meta = {"format": FORMAT, "kind": part.kind, "max_new_tokens": max_new_tokens, "model": lm.info.name}
        tmp.write_text(json.dumps({**meta, "documents": [asdict(d) for d in documents]}))
        _replace(tmp, path)
    if not (folder / f"block-{block}.npy").is_file():
        yield from residual_steps(lm, documents, block, folder)
    return documents, folder


def corpus_steps(
    lm: LoadedModel,
    data: Path,
    block: int,
    *,
    prompts: Sequence[str] = (),
    bank: bool | int = True,
    extra: Sequence[Part] = (),
    max_new_tokens: int = ANSWER_TOKENS,
) -> CorpusSteps:
    """The corpus of the given prompts, the bank (True, False, or its first N prompts) and any
    extra parts, at `block`: whatever is not on disk yet is built, one unit per `next()`."""
    if not 0 <= block < lm.info.n_blocks:
        raise EngineError(f"block {block} is out of range: the model has blocks 0..{lm.info.n_blocks - 1}")
    parts = [Part("given", tuple(prompts))] if prompts else []
    if bank:
        parts.append(bank_part(None if bank is True else int(bank)))
    parts += list(extra)
    if not parts:
        raise EngineError("a corpus needs prompts, the bank or both")
    root = model_folder(data, lm)
    shards = []
    for part in parts:
        shards.append((yield from shard_steps(lm, root, part, block, max_new_tokens)))
    return Corpus(shards, block)


class Corpus:
    """Loaded shards at one block: token ids, spans and residuals (memory-mapped, read-only)."""

    def __init__(self, shards: Sequence[tuple[Sequence[Document], Path]], block: int) -> None:
        self.block = block
        self.shards = list(shards)
        self.documents: list[Document] = [d for docs, _ in shards for d in docs]
        self.residuals = [np.load(f / f"block-{block}.npy", mmap_mode="r") for _, f in shards]
        sums = [np.load(f / f"block-{block}-sum.npy") for _, f in shards]
        spans = [d.stored for d in self.documents]
        self.starts = np.cumsum([0, *spans])  # [D + 1] first stored position of each document
        self.size = int(self.starts[-1])
        if sum(len(r) for r in self.residuals) != self.size:
            raise EngineError("the stored residuals do not match their documents: delete the corpus folder")
        stored_ids = [np.asarray(d.ids[d.first :], dtype=np.int64) for d in self.documents]
        self.token_ids = np.concatenate(stored_ids)  # [N]
        self.document_of = torch.from_numpy(np.repeat(np.arange(len(spans)), spans))  # [N]
        prompt_part = [np.arange(d.stored) < d.answer - d.first for d in self.documents]
        self.in_prompt = torch.from_numpy(np.concatenate(prompt_part))  # [N] bool: prompt, not answer
        self.mean = torch.from_numpy(np.sum(sums, axis=0) / max(self.size, 1))  # [d] float64

    @property
    def width(self) -> int:
        return int(self.residuals[0].shape[1])

    def project(self, vector: Tensor) -> Tensor:
        """(h_t - corpus mean) · v/|v| for every stored token: float32 [N].

        The float16 residuals are multiplied as stored by the unit vector in float16 (one pass over
        the store, float32 accumulation). Each of the three roundings (storage, the unit vector,
        the float16 result) errs by at most 2^-11 of the token's residual norm."""
        if vector.shape != (self.width,):
            raise EngineError(f"the vector has shape {tuple(vector.shape)}, the corpus needs ({self.width},)")
        unit = vector.detach().double().cpu()
        unit = unit / unit.norm().clamp_min(1e-30)
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only memory map: only read here
            for stored in self.residuals:
                out.append((torch.from_numpy(stored) @ unit.half()).float())  # [n, d] @ [d] -> [n]
        return torch.cat(out) - float(self.mean @ unit)

    def residual(self, index: int) -> Tensor:
        """The stored residual of token `index` (float32 [d])."""
        for stored in self.residuals:
            if index < len(stored):
                return torch.from_numpy(np.asarray(stored[index], dtype=np.float32))
            index -= len(stored)
        raise IndexError(index)
