"""The models a worker holds in memory: loaded on first use, evicted when another is needed and
nothing is using them, so one stays resident on a small machine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine import LoadedModel, load_model
from engine.discovery.embedder import Embedder
from engine.models import pick_device


class Models:
    def __init__(self, config: dict[str, Any], on_change: Callable[[list[str]], None] = lambda names: None):
        self.config = config
        self.loaded: dict[str, LoadedModel] = {}
        self.on_change = on_change  # told the names held after every load (a scheduler routes by them)
        self._embedder: Embedder | None = None

    def get(self, name: str, in_use: set[str]) -> LoadedModel:
        """The model `name`, loading it if needed; models not in `in_use` may be evicted for it."""
        if name not in self.loaded:
            lm = load_model(
                name, device=self.config["device"], dtype=self.config["dtype"], data=self.config["data_dir"]
            )  # before evicting: a name that fails to load costs the resident models nothing
            for other in [n for n in self.loaded if n not in in_use]:
                del self.loaded[other]
            self.loaded[name] = lm
            self.on_change(sorted(self.loaded))
        return self.loaded[name]

    def embedder(self) -> Embedder:
        """The sentence-embedding model that scoring uses: loaded on first use and kept (90 MB)."""
        if self._embedder is None:
            self._embedder = Embedder(device=pick_device(self.config["device"]))  # "auto" as for models
        return self._embedder
