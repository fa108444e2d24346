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
from app.executor.protocol import ExportPeft, ExportVectors, ParseVectors
from engine.decode.request import check_adapter
from engine.errors import EngineError
from engine.methods.adapters import export_peft
from engine.models import LoadedModel
from engine.vectors import export_gguf, load_any, save_vectors


def export(message: ExportVectors) -> dict[str, Any]:
    """The vectors as a safetensors or GGUF file: {"data": its bytes}."""
    vectors = [from_bytes(v) for v in message.vectors]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out"
        if message.format == "safetensors":
            save_vectors(path, torch.stack(vectors), message.metadata)
        elif message.format == "gguf":
            pairs = list(zip(message.blocks, vectors, strict=True))
            export_gguf(path, pairs, message.model_hint, message.metadata)
        else:
            raise EngineError(f"unknown vector format {message.format!r}")
        return {"data": path.read_bytes()}


def parse(message: ParseVectors, width: int) -> dict[str, Any]:
    """An uploaded file's vectors, checked against the model's width."""
    name = Path(message.name or "upload").name or "upload"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(message.data)
        found = load_any(path, expected_width=width, max_bytes=message.max_bytes)
    return {
        "vectors": [to_bytes(v) for v in found.vectors],
        "metadata": found.metadata,
        "blocks": list(found.blocks) if found.blocks is not None else None,
        "model_hint": found.model_hint,
    }


def peft(lm: LoadedModel, message: ExportPeft) -> dict[str, Any]:
    """A stored adapter as the files of a PEFT LoRA adapter folder: {"files": {name: bytes}}. The
    model gives the projection's module path (PEFT's target) and the base model's folder or id."""
    adapter = adapter_from(message.adapter)
    check_adapter(lm, adapter)
    base = str(getattr(lm.model.config, "_name_or_path", "") or lm.info.name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_peft(Path(tmp), lm.model, adapter, base_model=base, meta=message.metadata)
        return {"files": {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}}
