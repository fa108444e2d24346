"""Starting work: check a request completely, then write the run and its job in one transaction.

Nothing is written until every check passed, so a refused request leaves no trace. The API and the
CLI both come through here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app import schemas, store
from app.errors import Invalid
from app.models import Detector, Job, Run, Vector
from app.refine import scale_sweep
from app.service import Service


def check_limits(service: Service, n_vectors: int, steps: int | None) -> None:
    s = service.settings
    if not 1 <= n_vectors <= s.max_vectors:
        raise Invalid(f"number of vectors must be between 1 and {s.max_vectors}, got {n_vectors}")
    if steps is not None and not 0 <= steps <= s.max_steps:
        raise Invalid(f"steps must be between 0 and {s.max_steps}, got {steps}")


def _queue(
    service: Service, kind: str, checked: dict[str, Any], *, priority: int, owner: str, **extra: Any
) -> Job:
    with service.db.session() as session:
        model = store.upsert_model(session, checked["model"])
        job = store.create_run(
            session, kind=kind, spec=checked["spec"], model=model, priority=priority, owner=owner, **extra
        )
    service.notify()
    return job


def check_melbo(service: Service, body: schemas.MelboCreate) -> dict[str, Any]:
    """Every check a run of the form's methods must pass (the model-dependent ones on the worker);
    writes nothing."""
    check_limits(service, body.n_vectors, body.steps)
    kind = body.method if body.method in ("dct", "adapter") else "melbo"
    return service.validate(kind, body.engine_spec(), reserve=service.settings.gallery_tokens)


def start_melbo(service: Service, body: schemas.MelboCreate, *, owner: str = "") -> Job:
    """The run's job (and, with `twin`, its random twin's, queued right behind it)."""
    checked = check_melbo(service, body)
    with service.db.session() as session:
        model = store.upsert_model(session, checked["model"])
        job = store.create_run(
            session, kind=body.method, spec=checked["spec"], model=model, priority=body.priority, owner=owner
        )
        if body.twin and body.method in ("melbo", "adapter"):
            # The same settings with no training steps: the same prompts give the same default R (a
            # fixed share of their residual norm), so its vectors (random adapters of the same rank,
            # for an adapter run) are the baseline for beyond-random.
            random = {"method": "random"} if body.method == "melbo" else {"steps": 0}
            store.create_run(
                session,
                kind="random" if body.method == "melbo" else "adapter",
                spec={**checked["spec"], **random},
                model=model,
                priority=body.priority - 1,  # what the user asks for next goes first; the baseline waits
                owner=owner,
                twin_of=job.run_id,
            )
    service.notify()
    return job


def start_chain(service: Service, body: schemas.ChainCreate, *, owner: str = "") -> Job:
    check_limits(service, body.n_vectors, body.steps)
    with service.db.session() as session:
        theta0 = store.get_vector(session, body.vector_id)
        if theta0.is_adapter:
            raise Invalid(f"vector {theta0.id} is a steering adapter; a chain starts from a steering vector")
        run = theta0.run
        model, prompts, block = run.model_name, body.prompts or list(run.prompts), theta0.block
    spec = {**body.spec(exclude={"vector_id"}), "prompts": prompts, "model": model, "source": block}
    checked = service.validate("chain", spec, reserve=service.settings.gallery_tokens)
    return _queue(
        service, "chain", checked, priority=body.priority, owner=owner, parent_vector_id=body.vector_id
    )


def start_calibration(service: Service, body: schemas.CalibrationCreate, *, owner: str = "") -> Job:
    checked = service.validate("calibrate", body.spec())
    return _queue(service, "calibrate", checked, priority=body.priority, owner=owner)


def start_samples(
    service: Service, body: schemas.SamplesCreate, *, owner: str = "", for_run: int | None = None
) -> Job:
    """`for_run`: the run whose page shows these samples (and this job's progress)."""
    if not 1 <= len(body.vector_ids) <= 64:
        raise Invalid(f"give between 1 and 64 vectors, got {len(body.vector_ids)}")
    if body.max_new_tokens > service.settings.max_new_tokens:
        raise Invalid(f"max new tokens must be at most {service.settings.max_new_tokens}")
    with service.db.session() as session:
        vectors = session.scalars(select(Vector).where(Vector.id.in_(body.vector_ids))).all()
        missing = sorted(set(body.vector_ids) - {v.id for v in vectors})
        if missing:
            raise Invalid(f"no vector(s) {', '.join(map(str, missing))}")
        models = {session.get(Run, v.run_id).model_name for v in vectors}  # type: ignore[union-attr]
    if len(models) > 1:
        raise Invalid(f"the vectors belong to different models ({', '.join(sorted(models))})")
    spec = {**body.spec(exclude={"vector_ids"}), "model": models.pop()}
    checked = service.validate("generate", spec)
    return _queue(
        service,
        "generate",
        checked,
        priority=body.priority,
        owner=owner,
        inputs={"vector_ids": body.vector_ids, **({"for_run": for_run} if for_run is not None else {})},
    )


def start_scale_sweep(
    service: Service, vector_id: int, body: schemas.ScaleSweepCreate, *, owner: str = ""
) -> Job:
    """A scale sweep of a stored vector (on its run's prompts unless others are given)."""
    with service.db.session() as session:
        vector = store.get_vector(session, vector_id)
        if vector.is_adapter:
            raise Invalid(f"vector {vector.id} is a steering adapter; the scale sweep takes steering vectors")
        model, block = vector.run.model_name, vector.block
        prompts = body.prompts if body.prompts is not None else [str(p) for p in vector.run.prompts]
    tokens = body.max_new_tokens if body.max_new_tokens is not None else service.settings.gallery_tokens
    if tokens > service.settings.max_new_tokens:
        raise Invalid(f"max new tokens must be at most {service.settings.max_new_tokens}, got {tokens}")
    spec = {
        "prompts": prompts,
        "block": block,
        "model": model,
        "scales": sorted(set(body.scales)),
        "max_new_tokens": tokens,
    }
    checked = service.validate(scale_sweep.KIND, spec, reserve=tokens)
    return _queue(
        service, scale_sweep.KIND, checked, priority=body.priority, owner=owner, parent_vector_id=vector_id
    )


# Refining a vector into new vectors (app/refine/refinements.py reads them back): each run's parent is the
# vector; it trains on the vector's run's prompts (generalize: and the probes) with that run's
# objective settings, at the vector's block.

OBJECTIVE = ("p", "q", "positions", "loss", "normalize")  # read from the vector's run where it has them


def _refined(service: Service, vector_id: int) -> dict[str, Any]:
    """What a refinement takes from its vector: model, block, prompts, objective settings, and the
    vectors it was trained orthogonal to (the earlier ones of an orthogonal MELBO run)."""
    with service.db.session() as session:
        vector = store.get_vector(session, vector_id)
        if vector.is_adapter:
            raise Invalid(f"vector {vector.id} is a steering adapter; refining takes steering vectors")
        run = vector.run
        target = run.target if run.target is not None else run.spec.get("target")
        orthogonal = run.kind in ("melbo", "random") and bool(run.spec.get("orthogonal"))
        earlier = [v.id for v in run.vectors if v.index < vector.index] if orthogonal else []
        return {
            "orthogonal_to": earlier,
            "model": run.model_name,
            "block": vector.block,
            "prompts": [str(p) for p in run.prompts],
            "objective": {
                **{k: run.spec[k] for k in OBJECTIVE if run.spec.get(k) is not None},
                **({"target": target} if target is not None else {}),
            },
        }


def start_rpath(service: Service, vector_id: int, body: schemas.RPathCreate, *, owner: str = "") -> Job:
    """The vector trained again from itself at each multiple of its norm."""
    check_limits(service, 1, body.steps)
    parent = _refined(service, vector_id)
    spec = {
        **parent["objective"],
        "prompts": body.prompts if body.prompts is not None else parent["prompts"],
        "source": parent["block"],
        "model": parent["model"],
        "multiples": sorted(set(body.multiples)),
        **({"steps": body.steps} if body.steps is not None else {}),
    }
    checked = service.validate("rpath", spec, reserve=service.settings.gallery_tokens)
    return _queue(
        service,
        "rpath",
        checked,
        priority=body.priority,
        owner=owner,
        parent_vector_id=vector_id,
        inputs={"orthogonal_to": parent["orthogonal_to"]},
    )


def start_generalize(
    service: Service, vector_id: int, body: schemas.GeneralizeCreate, *, owner: str = ""
) -> Job:
    """The vector trained further on its run's prompts and the probes, compared on held-out prompts."""
    check_limits(service, 1, body.steps)
    probes = [p for p in body.probes if p.strip()]
    held_out = [p for p in body.held_out if p.strip()]
    if not probes:
        raise Invalid("probes: give at least one prompt to train on, one per line")
    if not held_out:
        raise Invalid("held-out prompts: give at least one prompt to compare on, one per line")
    tokens = body.max_new_tokens if body.max_new_tokens is not None else service.settings.gallery_tokens
    if tokens > service.settings.max_new_tokens:
        raise Invalid(f"max new tokens must be at most {service.settings.max_new_tokens}, got {tokens}")
    parent = _refined(service, vector_id)
    prompts = list(dict.fromkeys([*parent["prompts"], *probes]))  # its own prompts first, each once
    trained_on = [p for p in held_out if p in prompts]
    if trained_on:
        raise Invalid(
            f"held-out prompts must not be trained on: {trained_on[0][:80]!r} is among the training prompts"
        )
    spec = {
        **parent["objective"],
        "prompts": prompts,
        "held_out": held_out,
        "source": parent["block"],
        "model": parent["model"],
        "max_new_tokens": tokens,
        **({"steps": body.steps} if body.steps is not None else {}),
    }
    checked = service.validate("generalize", spec, reserve=service.settings.gallery_tokens)
    return _queue(
        service,
        "generalize",
        checked,
        priority=body.priority,
        owner=owner,
        parent_vector_id=vector_id,
        inputs={"orthogonal_to": parent["orthogonal_to"]},
    )


def start_search(service: Service, vector_id: int, body: schemas.SearchCreate, *, owner: str = "") -> Job:
    """An evolution strategy around the vector for completions the detector scores higher."""
    parent = _refined(service, vector_id)
    with service.db.session() as session:
        detector = session.get(Detector, body.detector_id)
        if detector is None:
            raise Invalid(f"detector_id: no detector {body.detector_id}")
        kind, pattern, judge_model = detector.kind, detector.pattern, detector.judge_model
    if kind == "judge" and judge_model not in ("", parent["model"]):
        raise Invalid(
            f"detector {body.detector_id} asks the judge model {judge_model!r}; a search asks the vector's "
            f"own model ({parent['model']!r}), so pick a regex detector or a judge of that model"
        )
    # The gallery's length, so the stored best vectors' gallery samples are the completions it scored.
    spec = {
        **body.spec(exclude={"detector_id"}),
        "prompts": body.prompts if body.prompts is not None else parent["prompts"],
        "block": parent["block"],
        "model": parent["model"],
        "pattern": pattern,
        "detector": kind,
        "max_new_tokens": service.settings.gallery_tokens,
    }
    checked = service.validate("search", spec, reserve=service.settings.gallery_tokens)
    return _queue(
        service,
        "search",
        checked,
        priority=body.priority,
        owner=owner,
        parent_vector_id=vector_id,
        inputs={"detector_id": body.detector_id},
    )
