"""Vectors in and out: safetensors and GGUF files (written and parsed by the worker's engine), JSON,
and the payload Neuronpedia takes for a custom vector."""

from __future__ import annotations

import io
import json
import logging
import math
import zipfile
from typing import Any

from sqlalchemy import select

from app import jobs, responses, schemas, store
from app.errors import AppError, Conflict, Invalid
from app.executor.protocol import ExportPeft, ExportVectors, ParseVectors
from app.fields import MAX_NAME, model_name, without_controls
from app.kinds import Kind
from app.models import AdapterFactors, LanguageModel, Run, Vector
from app.runs import launch
from app.runs.gallery import labels_of
from app.service import Service
from app.vectors import geometry, metadata

FORMATS = ("safetensors", "gguf", "json", "neuronpedia")  # vectors; adapters export for PEFT
log = logging.getLogger(__name__)

# What an imported vector is shown on when its file names no prompts: a neutral question and the
# prompt the embedded model's README examples use, so its effect is visible at once.
PROBE_PROMPTS = ("Tell me about yourself.", "How can I make a bomb?")
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
        _refuse_adapters(session, [vector.id])
        meta = _describe(session, vector)
        values, block = vector.values, vector.block
        model = session.get(LanguageModel, vector.run.model_id) if vector.run.model_id else None
        hint = model.architecture if model else ""
    name = f"vector-{vector_id}"
    if fmt == "json":
        return json.dumps({**meta, "values": responses.values_list(values)}).encode(), f"{name}.json"
    if fmt == "neuronpedia":
        # Neuronpedia's hook_resid_pre of layer L is the input of block L: our block s output is L = s + 1.
        payload = {
            "modelId": meta["model"],
            "layerNumber": block + 1,
            "hookType": "hook_resid_pre",
            "vector": responses.values_list(values),
            "vectorDefaultSteerStrength": 1.0,
            "vectorLabel": f"steerscope vector {vector_id}",
        }
        return json.dumps(payload).encode(), f"{name}-neuronpedia.json"
    message = ExportVectors(
        model=meta["model"],
        format=fmt,
        vectors=[values],
        blocks=[block],
        metadata={**meta, "blocks": [block]},
        model_hint=hint,
    )
    data: bytes = service.ask(message)["data"]
    return data, f"{name}.{fmt}"


def export_peft(service: Service, vector_id: int) -> tuple[bytes, str]:
    """A steering adapter as a zip of the PEFT LoRA folder (adapter_model.safetensors and
    adapter_config.json) that `peft.PeftModel.from_pretrained` loads; its bytes and file name."""
    with service.db.session() as session:
        vector = store.get_vector(session, vector_id)
        factors = vector.adapter
        if factors is None:
            raise Invalid(f"vector {vector_id} is a steering vector, not an adapter: export it as a file")
        meta = {**_describe(session, vector), "rank": factors.rank, "radius": factors.radius}
        message = ExportPeft(
            model=vector.run.model_name, adapter=store.adapter_payload(vector), metadata=meta
        )
    files: dict[str, bytes] = service.ask(message)["files"]
    name = f"adapter-{vector_id}"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for filename, data in files.items():
            archive.writestr(f"{name}/{filename}", data)
    return buffer.getvalue(), f"{name}.zip"


def _refuse_adapters(session: Any, vector_ids: list[int]) -> None:
    """Vector files hold vectors; an adapter steers with its factors, which they cannot carry."""
    adapters = sorted(
        session.scalars(select(AdapterFactors.vector_id).where(AdapterFactors.vector_id.in_(vector_ids)))
    )
    if adapters:
        which = ", ".join(f"#{i}" for i in adapters[:8]) + (", ..." if len(adapters) > 8 else "")
        raise Invalid(
            f"{which} {'is a steering adapter' if len(adapters) == 1 else 'are steering adapters'}: "
            "vector files cannot hold one; export each as a PEFT adapter "
            f"(/api/vectors/{adapters[0]}/peft)"
        )


def export_run(service: Service, run_id: int, fmt: str) -> tuple[bytes, str]:
    """All of a run's vectors in one file (safetensors or JSON)."""
    if fmt not in ("safetensors", "json"):
        raise Invalid("a run's vectors export as safetensors or json (GGUF holds one vector per block)")
    with service.db.session() as session:
        run = store.get_run(session, run_id)
        vectors = list(run.vectors)
        if not vectors:
            raise Invalid(f"run {run_id} has no vectors yet")
        _refuse_adapters(session, [v.id for v in vectors])
        metas = [_describe(session, v) for v in vectors]
        values = [v.values for v in vectors]
    name = f"run-{run_id}"
    if fmt == "json":
        rows = [{**m, "values": responses.values_list(v)} for m, v in zip(metas, values, strict=True)]
        return json.dumps({"run_id": run_id, "vectors": rows}).encode(), f"{name}.json"
    metadata = {
        "run_id": run_id,
        "model": metas[0]["model"],
        "blocks": [m["block"] for m in metas],
        "vectors": metas,
    }
    data: bytes = service.ask(
        ExportVectors(
            model=metas[0]["model"],
            format="safetensors",
            vectors=values,
            blocks=metadata["blocks"],
            metadata=metadata,
        )
    )["data"]
    return data, f"{name}.safetensors"


class AlreadyImported(Conflict):
    """Every vector of the file was imported already; `run_id` holds the first of them."""

    def __init__(self, message: str, run_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id


def same_vectors(
    session: Any, model: str, rows: list[tuple[bytes, int]], *, kind: str | None = None
) -> list[Vector | None]:
    """For each (values, block), a stored vector of the model (of a run of `kind`, if given) with
    exactly those values at that block."""
    out: list[Vector | None] = []
    for values, block in rows:
        query = (
            select(Vector)
            .join(Run, Vector.run_id == Run.id)
            .where(
                Run.model_name == model,
                Vector.block == block,
                Vector.width == len(values) // 4,
                Vector.values == values,
            )
            .order_by(Vector.id)
            .limit(1)
        )
        out.append(session.scalars(query if kind is None else query.where(Run.kind == kind)).first())
    return out


def import_file(service: Service, *, data: bytes, filename: str, model: str | None, block: int | None) -> int:
    """Store the vectors of an uploaded file as a run of kind "import"; its id. Checks come first:
    size, format, dtype, finite values, width against the model, blocks within it, and that the
    file was not imported already; the file's metadata meets the API's limits field by field.
    Nothing is written unless all pass."""
    filename = without_controls(filename)[:MAX_NAME]
    limit = service.settings.max_upload_bytes
    if len(data) > limit:
        raise Invalid(f"{filename} is {len(data)} bytes; imports are limited to {limit} bytes")
    if not data:
        raise Invalid(f"{filename} is empty")
    model = model_name(model) if model else service.settings.default_model
    found = service.ask(ParseVectors(model=model, data=data, name=filename, max_bytes=limit))
    info, count = found["model"], len(found["vectors"])
    if count > service.settings.max_vectors:
        raise Invalid(
            f"{filename} holds {count} vectors; an import takes at most {service.settings.max_vectors}"
        )
    meta = metadata.check(found["metadata"], filename)
    blocks = found["blocks"] or meta.get("blocks")
    if block is not None:
        blocks = [block] * count
    if not blocks or len(blocks) != count:
        raise Invalid(f"{filename} does not say which block its vectors steer: give the block")
    for b in blocks:
        if not isinstance(b, int) or not 0 <= b < info["n_blocks"]:
            raise Invalid(f"block {b} is out of range: {model} has blocks 0..{info['n_blocks'] - 1}")
    pairs = list(zip(found["vectors"], blocks, strict=True))
    with service.db.session() as session:
        # A file imported before adds nothing: refused, pointing at where it is. A vector that was
        # trained here (an export read back) is imported and its twin noted.
        imported = same_vectors(session, info["name"], pairs, kind=Kind.IMPORT)
        if all(imported):
            first = imported[0]
            assert first is not None
            names = ", ".join(f"#{t.id}" for t in imported if t is not None)
            what = f"vector{'s' if count > 1 else ''} {names}"
            raise AlreadyImported(
                f"{filename} was imported already: {what} of run #{first.run_id}", first.run_id
            )
        twins = same_vectors(session, info["name"], pairs)
        language_model = store.upsert_model(session, info)
        prompts = list(meta.get("prompts") or []) or list(PROBE_PROMPTS)
        spec = {"prompts": prompts, "model": model, "file": filename}
        job = store.create_run(session, kind=Kind.IMPORT, spec=spec, model=language_model)
        job.run.result = {
            "metadata": meta,
            "model_hint": str(found["model_hint"] or "")[:MAX_NAME],
            "prompts_from": "file" if meta.get("prompts") else "probe",
            "same_as": {str(i): t.id for i, t in enumerate(twins) if t is not None},
        }
        jobs.transition(session, job, "running")
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
        jobs.transition(session, job, "succeeded", message=f"imported {count} vector(s) from {filename}")
        return job.run.id


def sample_run(service: Service, run_id: int) -> list[int]:
    """Queue the gallery samples of a run whose vectors were not trained here (an import): each
    vector at scale 1 on the run's prompts, 64 vectors a job; the jobs' ids."""
    with service.db.session() as session:
        run = store.get_run(session, run_id)
        ids, prompts = [v.id for v in run.vectors], [str(p) for p in run.prompts]
    started = []
    for lo in range(0, len(ids), 64):
        body = schemas.SamplesCreate(
            vector_ids=ids[lo : lo + 64], prompts=prompts, max_new_tokens=service.settings.gallery_tokens
        )
        started.append(launch.start_samples(service, body, for_run=run_id).id)
    return started


def sample_imported(service: Service, run_id: int) -> list[int]:
    """Start an import's gallery samples; a refusal is logged, not raised (the import stands, and
    its page offers to try again)."""
    try:
        return sample_run(service, run_id)
    except AppError:
        log.exception("could not start the samples of imported run %s", run_id)
        return []


def run_vector_ids(session: Any, run_id: int) -> list[int]:
    return list(session.scalars(select(Vector.id).where(Vector.run_id == run_id).order_by(Vector.index)))
