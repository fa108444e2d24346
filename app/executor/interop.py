"""Vector files in the worker: the engine's readers and writers (safetensors, GGUF) on bytes.

The engine reads every file as untrusted (no pickle, every length checked), so uploads are parsed
here, not in the web process.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from app.executor.codec import adapter_from, from_bytes, to_bytes
from engine.decode.request import check_adapter
from engine.errors import EngineError
from engine.methods.adapters import export_peft
from engine.models import LoadedModel
from engine.vectors import export_gguf, load_any, save_vectors


def export(message: dict[str, Any]) -> dict[str, Any]:
    """{"format": safetensors | gguf, "vectors": [bytes], "blocks": [int], "metadata", "model_hint"}."""
    vectors = [from_bytes(v) for v in message["vectors"]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out"
        if message["format"] == "safetensors":
            save_vectors(path, torch.stack(vectors), message.get("metadata") or {})
        elif message["format"] == "gguf":
            pairs = list(zip(message["blocks"], vectors, strict=True))
            export_gguf(path, pairs, message.get("model_hint", ""), message.get("metadata") or {})
        else:
            raise EngineError(f"unknown vector format {message['format']!r}")
        return {"data": path.read_bytes()}


def parse(message: dict[str, Any]) -> dict[str, Any]:
    """{"data": bytes, "name": the upload's file name, "width": the model's, "max_bytes"}."""
    name = Path(str(message.get("name") or "upload")).name or "upload"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(message["data"])
        found = load_any(path, expected_width=int(message["width"]), max_bytes=int(message["max_bytes"]))
    return {
        "vectors": [to_bytes(v) for v in found.vectors],
        "metadata": found.metadata,
        "blocks": list(found.blocks) if found.blocks is not None else None,
        "model_hint": found.model_hint,
    }


def peft(lm: LoadedModel, message: dict[str, Any]) -> dict[str, Any]:
    """A stored adapter as the files of a PEFT LoRA adapter folder: {"files": {name: bytes}}. The
    model gives the projection's module path (PEFT's target) and the base model's folder or id."""
    adapter = adapter_from(message["adapter"])
    check_adapter(lm, adapter)
    base = str(getattr(lm.model.config, "_name_or_path", "") or lm.info.name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_peft(Path(tmp), lm.model, adapter, base_model=base, meta=message.get("metadata"))
        return {"files": {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}}
