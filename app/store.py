"""Data access: the functions that read and write runs, vectors and generations."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import jobs
from app.errors import Invalid, NotFound
from app.models import AdapterFactors, Generation, Job, JobEvent, LanguageModel, Run, Vector

SAMPLING = ("seed", "temperature", "top_p", "max_new_tokens")


def upsert_model(session: Session, info: dict[str, Any]) -> LanguageModel:
    """The models row for a worker's ModelInfo, created on first sight and refreshed after."""
    model = session.scalars(select(LanguageModel).where(LanguageModel.name == info["name"])).first()
    if model is None:
        model = LanguageModel(name=info["name"])
        session.add(model)
    model.architecture = str(info.get("architecture", ""))
    model.n_blocks = int(info.get("n_blocks", 0))
    model.width = int(info.get("width", 0))
    model.context_length = int(info.get("context_length", 0))
    model.chat_template = bool(info.get("chat_template", False))
    session.flush()
    return model


def create_run(
    session: Session,
    *,
    kind: str,
    spec: dict[str, Any],
    model: LanguageModel,
    inputs: dict[str, Any] | None = None,
    parent_vector_id: int | None = None,
    priority: int = 0,
    owner: str = "",
    twin_of: int | None = None,
) -> Job:
    """A run of `kind` with its validated spec, and the queued job that will carry it out."""
    run = Run(
        kind=kind,
        model_id=model.id,
        model_name=model.name,
        spec=spec,
        prompts=list(spec["prompts"]),
        seed=int(spec.get("seed", 0)),
        inputs=inputs or {},
        parent_vector_id=parent_vector_id,
        source=spec.get("source"),
        target=spec.get("target"),
        radius=spec.get("radius"),
        result={},
        twin_of=twin_of,
    )
    session.add(run)
    return jobs.enqueue(session, run=run, priority=priority, owner=owner)


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run {run_id}")
    return run


def get_vector(session: Session, vector_id: int) -> Vector:
    vector = session.get(Vector, vector_id)
    if vector is None:
        raise NotFound(f"no vector {vector_id}")
    return vector


def add_vectors(session: Session, run: Run, rows: Sequence[dict[str, Any]]) -> list[Vector]:
    """Store a worker's finished vectors; an index the run already has is kept as it is."""
    have = set(session.scalars(select(Vector.index).where(Vector.run_id == run.id)))
    added = []
    for row in rows:
        if row["index"] in have:
            continue
        values: bytes = row["values"]
        vector = Vector(
            run_id=run.id,
            index=int(row["index"]),
            parent_id=run.parent_vector_id,
            block=int(row["block"]),
            width=len(values) // 4,
            values=values,
            norm=float(row["norm"]),
            objective=row.get("objective"),
            kl=row.get("kl"),
            metrics=row.get("metrics", {}),
        )
        if row.get("adapter") is not None:
            a = row["adapter"]
            vector.adapter = AdapterFactors(
                rank=int(a["rank"]), radius=float(a["radius"]), factors=a["factors"]
            )
        session.add(vector)
        added.append(vector)
    session.flush()
    return added


def adapter_payload(vector: Vector) -> dict[str, Any]:
    """What a worker steers with when the vector is an adapter (app/executor/codec.py's payload)."""
    a = vector.adapter
    if a is None:
        raise Invalid(f"vector {vector.id} is not a steering adapter")
    return {
        "id": vector.id,
        "index": vector.index,
        "block": vector.block,
        "rank": a.rank,
        "radius": a.radius,
        "width": vector.width,
        "factors": a.factors,
    }


def generation_key(
    model: str, vector_id: int | None, scale: float, block: int | None, prompt: str, **sampling: Any
) -> str:
    """Identical requests share a key, so they are answered from the table instead of regenerated."""
    if vector_id is None:
        scale, block = 0.0, None  # unsteered: scale and block mean nothing
    fields = [model, vector_id, float(scale), block, prompt, *(sampling[k] for k in SAMPLING)]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def find_generation(session: Session, key: str) -> Generation | None:
    return session.scalars(select(Generation).where(Generation.key == key)).first()


def add_generation(session: Session, model: LanguageModel, row: dict[str, Any]) -> Generation:
    """Store one generation (vector_id None: unsteered), linked to the unsteered one it sits beside."""
    sampling = {k: row[k] for k in SAMPLING}
    key = generation_key(
        model.name, row.get("vector_id"), row["scale"], row.get("block"), row["prompt"], **sampling
    )
    found = find_generation(session, key)
    if found is not None:
        return found
    generation = Generation(
        key=key,
        model_id=model.id,
        vector_id=row.get("vector_id"),
        scale=float(row["scale"]) if row.get("vector_id") is not None else 0.0,
        block=row.get("block") if row.get("vector_id") is not None else None,
        prompt=row["prompt"],
        text=row["text"],
        n_tokens=int(row["n_tokens"]),
        finish_reason=row["finish_reason"],
        metrics=row.get("metrics", {}),
        **sampling,
    )
    if generation.vector_id is not None:
        unsteered = find_generation(
            session, generation_key(model.name, None, 0.0, None, row["prompt"], **sampling)
        )
        generation.unsteered_id = unsteered.id if unsteered else None
    session.add(generation)
    session.flush()
    if generation.vector_id is None:
        # Rows of one batch finish in any order: steered ones stored before their partner get it now.
        session.execute(
            update(Generation)
            .where(
                Generation.unsteered_id.is_(None),
                Generation.vector_id.is_not(None),
                Generation.model_id == model.id,
                Generation.prompt == generation.prompt,
                *(getattr(Generation, k) == v for k, v in sampling.items()),
            )
            .values(unsteered_id=generation.id)
        )
    return generation


def gallery_scales(vector: Vector) -> tuple[float, ...]:
    """The scales a vector's gallery shows it at: x1, and its working scale when that differs."""
    working = vector.working_scale
    return (1.0,) if working is None or working == 1.0 else (1.0, float(working))


def gallery_done(session: Session, run: Run, prompts: Sequence[str], max_new_tokens: int) -> list[list[Any]]:
    """[vector index or None, prompt index, scale] triples whose gallery sample is already stored
    (each vector at x1 and at its working scale, once that is known)."""
    model = session.get(LanguageModel, run.model_id) if run.model_id else None
    if model is None:
        return []
    sampling = {"seed": 0, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": max_new_tokens}
    triples: dict[str, list[Any]] = {}
    for p, prompt in enumerate(prompts):
        triples[generation_key(model.name, None, 0.0, None, prompt, **sampling)] = [None, p, 0.0]
        for vector in run.vectors:
            for scale in gallery_scales(vector):
                key = generation_key(model.name, vector.id, scale, vector.block, prompt, **sampling)
                triples[key] = [vector.index, p, scale]
    keys = list(triples)
    stored: set[str] = set()
    for lo in range(0, len(keys), 500):  # one query per 500 keys, not one per sample
        stored.update(session.scalars(select(Generation.key).where(Generation.key.in_(keys[lo : lo + 500]))))
    return [triple for key, triple in triples.items() if key in stored]


def add_event(session: Session, job_id: int, kind: str, data: dict[str, Any]) -> JobEvent:
    event = JobEvent(job_id=job_id, type=kind, data=data)
    session.add(event)
    session.flush()
    return event


def events_after(session: Session, job_id: int, after: int) -> Sequence[JobEvent]:
    return session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id)
    ).all()
