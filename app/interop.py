"""Vectors in and out: safetensors and GGUF files (written and parsed by the worker's engine), JSON,
and the payload Neuronpedia takes for a custom vector."""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import select

from app import geometry, jobs, schemas, store
from app.errors import Invalid
from app.gallery import labels_of
from app.models import LanguageModel, Run, Vector
from app.service import Service

FORMATS = ("safetensors", "gguf", "json", "neuronpedia")
MEDIA = {
    "safetensors": "application/octet-stream",
    "gguf": "application/octet-stream",
    "json": "application/json",
    "neuronpedia": "application/json",
}


def _describe(session: Any, vector: Vector) -> dict[str, Any]:
    run = vector.run
    return {
        "steerscope_vector_id": vector.id,
        "run_id": run.id,
        "run_kind": run.kind,
        "index": vector.index,
        "model": run.model_name,
        "block": vector.block,
        "norm": vector.norm,
        "objective": vector.objective,
        "kl": vector.kl,
        "prompts": run.prompts,
        "labels": [x.name for x in labels_of(session, [vector.id]).get(vector.id, [])],
    }


def export_vector(service: Service, vector_id: int, fmt: str) -> tuple[bytes, str]:
    """The file's bytes and its name."""
    if fmt not in FORMATS:
        raise Invalid(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    with service.db.session() as session:
        vector = store.get_vector(session, vector_id)
        meta = _describe(session, vector)
        values, block = vector.values, vector.block
        model = session.get(LanguageModel, vector.run.model_id) if vector.run.model_id else None
        hint = model.architecture if model else ""
    name = f"vector-{vector_id}"
    if fmt == "json":
        return json.dumps({**meta, "values": schemas.values_list(values)}).encode(), f"{name}.json"
    if fmt == "neuronpedia":
        # Neuronpedia's hook_resid_pre of layer L is the input of block L: our block s output is L = s + 1.
        payload = {
            "modelId": meta["model"],
            "layerNumber": block + 1,
            "hookType": "hook_resid_pre",
            "vector": schemas.values_list(values),
            "vectorDefaultSteerStrength": 1.0,
            "vectorLabel": f"steerscope vector {vector_id}",
        }
        return json.dumps(payload).encode(), f"{name}-neuronpedia.json"
    message = {
        "type": "export_vectors",
        "format": fmt,
        "vectors": [values],
        "blocks": [block],
        "metadata": {**meta, "blocks": [block]},
        "model_hint": hint,
        "model": meta["model"],
    }
    data: bytes = service.ask(message)["data"]
    return data, f"{name}.{fmt}"


def export_run(service: Service, run_id: int, fmt: str) -> tuple[bytes, str]:
    """All of a run's vectors in one file (safetensors or JSON)."""
    if fmt not in ("safetensors", "json"):
        raise Invalid("a run's vectors export as safetensors or json (GGUF holds one vector per block)")
    with service.db.session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise Invalid(f"no run {run_id}")
        vectors = list(run.vectors)
        if not vectors:
            raise Invalid(f"run {run_id} has no vectors yet")
        metas = [_describe(session, v) for v in vectors]
        values = [v.values for v in vectors]
    name = f"run-{run_id}"
    if fmt == "json":
        rows = [{**m, "values": schemas.values_list(v)} for m, v in zip(metas, values, strict=True)]
        return json.dumps({"run_id": run_id, "vectors": rows}).encode(), f"{name}.json"
    metadata = {
        "run_id": run_id,
        "model": metas[0]["model"],
        "blocks": [m["block"] for m in metas],
        "vectors": metas,
    }
    data: bytes = service.ask(
        {
            "type": "export_vectors",
            "format": "safetensors",
            "vectors": values,
            "blocks": metadata["blocks"],
            "metadata": metadata,
            "model": metas[0]["model"],
        }
    )["data"]
    return data, f"{name}.safetensors"


def import_file(service: Service, *, data: bytes, filename: str, model: str | None, block: int | None) -> int:
    """Store the vectors of an uploaded file as a run of kind "import"; its id. Checks come first:
    size, format, dtype, finite values, width against the model, blocks within it. Nothing is
    written unless all pass."""
    limit = service.settings.max_upload_bytes
    if len(data) > limit:
        raise Invalid(f"{filename} is {len(data)} bytes; imports are limited to {limit} bytes")
    if not data:
        raise Invalid(f"{filename} is empty")
    model = model or service.settings.default_model
    found = service.ask(
        {"type": "parse_vectors", "model": model, "data": data, "name": filename, "max_bytes": limit}
    )
    info, count = found["model"], len(found["vectors"])
    blocks = found["blocks"] or found["metadata"].get("blocks")
    if block is not None:
        blocks = [block] * count
    if not blocks or len(blocks) != count:
        raise Invalid(f"{filename} does not say which block its vectors steer: give the block")
    for b in blocks:
        if not isinstance(b, int) or not 0 <= b < info["n_blocks"]:
            raise Invalid(f"block {b} is out of range: {model} has blocks 0..{info['n_blocks'] - 1}")
    with service.db.session() as session:
        language_model = store.upsert_model(session, info)
        spec = {"prompts": list(found["metadata"].get("prompts") or []), "model": model, "file": filename}
        job = store.create_run(session, kind="import", spec=spec, model=language_model)
        job.run.result = {"metadata": found["metadata"], "model_hint": found["model_hint"]}
        jobs.transition(job, "running")
        rows = []
        for i, (values, b) in enumerate(zip(found["vectors"], blocks, strict=True)):
            norm = float(math.sqrt(float((geometry.stack([values]) ** 2).sum())))
            rows.append(
                {
                    "index": i,
                    "block": b,
                    "values": values,
                    "norm": norm,
                    "metrics": {"imported_from": filename},
                }
            )
        store.add_vectors(session, job.run, rows)
        jobs.transition(job, "succeeded", message=f"imported {count} vector(s) from {filename}")
        return job.run.id


def run_vector_ids(session: Any, run_id: int) -> list[int]:
    return list(session.scalars(select(Vector.id).where(Vector.run_id == run_id).order_by(Vector.index)))
