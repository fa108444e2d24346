from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from engine.models import LoadedModel, load_model
from tests.tiny import build_model_dir

# Two threads for torch in a test process, one where the suite runs on several (make test): the
# processes would otherwise ask for more threads than the machine has cores, and wait on each other.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path) -> LoadedModel:
    """A 4-block random Llama (width 64) with a ChatML tokenizer, loaded like a real model."""
    return load_model(str(tiny_dir), device="cpu")


@pytest.fixture(scope="session")
def embedded() -> LoadedModel:
    """The real embedded model (SmolLM2-135M-Instruct); converted once into ./data."""
    return load_model("default", device="cpu")
