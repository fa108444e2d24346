"""Starting work: check a request completely, then write the run and its job in one transaction.

Nothing is written until every check passed, so a refused request leaves no trace. The API and the
CLI both come through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from app import jobs, kinds, schemas, store
from app.errors import Invalid
from app.kinds import Kind
from app.models import Detector, Job, LanguageModel, Run, Vector
from app.service import Service
from app.vectors import geometry


def check_limits(service: Service, n_vectors: int, steps: int | None) -> None:
    s = service.settings
    if not 1 <= n_vectors <= s.max_vectors:
        raise Invalid(f"number of vectors must be between 1 and {s.max_vectors}, got {n_vectors}")
    if steps is not None and not 0 <= steps <= s.max_steps:
        raise Invalid(f"steps must be between 0 and {s.max_steps}, got {steps}")


def _queue(
    service: Service, kind: Kind, checked: dict[str, Any], *, priority: int, owner: str, **extra: Any
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
    # A random baseline is MELBO's procedure with 0 steps: its spec is checked as MELBO's.
    kind = Kind.MELBO if body.method == Kind.RANDOM else body.method
    return service.validate(kind, body.engine_spec(), reserve=service.settings.gallery_tokens)


def start_melbo(service: Service, body: schemas.MelboCreate, *, owner: str = "") -> Job:
    """The run's job (and, with `twin`, its random twin's, queued right behind it)."""
    checked = check_melbo(service, body)
    with service.db.session() as session:
        model = store.upsert_model(session, checked["model"])
        job = store.create_run(
            session, kind=body.method, spec=checked["spec"], model=model, priority=body.priority, owner=owner
        )
        twin = kinds.of(body.method).twin
        if body.twin and twin is not None:
            # The same settings with no training: the same prompts give the same default R, so its
            # vectors (random adapters of the same rank, for an adapter run) are the baseline for
            # beyond-random.
            store.create_run(
                session,
                kind=twin,
                spec={**checked["spec"], **kinds.of(body.method).twin_spec},
                model=model,
                priority=body.priority,  # right behind its run: queued just after it, at its priority
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
    checked = service.validate(Kind.CHAIN, spec, reserve=service.settings.gallery_tokens)
    return _queue(
        service, Kind.CHAIN, checked, priority=body.priority, owner=owner, parent_vector_id=body.vector_id
    )


def start_calibration(service: Service, body: schemas.CalibrationCreate, *, owner: str = "") -> Job:
    checked = service.validate(Kind.CALIBRATE, body.spec())
    return _queue(service, Kind.CALIBRATE, checked, priority=body.priority, owner=owner)


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
    checked = service.validate(Kind.GENERATE, spec)
    return _queue(
        service,
        Kind.GENERATE,
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
    checked = service.validate(Kind.SCALE_SWEEP, spec, reserve=tokens)
    return _queue(
        service, Kind.SCALE_SWEEP, checked, priority=body.priority, owner=owner, parent_vector_id=vector_id
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
        orthogonal = kinds.of(run.kind).orthogonal and bool(run.spec.get("orthogonal"))
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
    checked = service.validate(Kind.RPATH, spec, reserve=service.settings.gallery_tokens)
    return _queue(
        service,
        Kind.RPATH,
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
    checked = service.validate(Kind.GENERALIZE, spec, reserve=service.settings.gallery_tokens)
    return _queue(
        service,
        Kind.GENERALIZE,
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
    checked = service.validate(Kind.SEARCH, spec, reserve=service.settings.gallery_tokens)
    return _queue(
        service,
        Kind.SEARCH,
        checked,
        priority=body.priority,
        owner=owner,
        parent_vector_id=vector_id,
        inputs={"detector_id": body.detector_id},
    )


@dataclass(frozen=True)
class Composed:
    run_id: int
    vector_id: int
    samples: Job  # its samples on the chain's prompts


def start_composition(service: Service, body: schemas.CompositionCreate, *, owner: str = "") -> Composed:
    """The composition test of a chain: the mean of its first n vectors × √n, stored at once as a
    run of its own (no training), then sampled on the chain's prompts by a samples job."""
    with service.db.session() as session:
        chain = store.get_run(session, body.chain_run)
        if chain.kind != Kind.CHAIN:
            raise Invalid(f"run {chain.id} is a {chain.kind} run; compositions are made from a chain")
        vectors = list(chain.vectors)
        if not 1 <= body.n <= len(vectors):
            raise Invalid(f"n must be between 1 and the chain's length {len(vectors)}, got {body.n}")
        composed = geometry.composition(geometry.stack([v.values for v in vectors]), body.n)
        model = session.get(LanguageModel, chain.model_id)
        if model is None:
            raise Invalid(f"run {chain.id} has not been started on a model yet")
        prompts = [str(p) for p in chain.prompts]
        spec = {"prompts": prompts, "model": chain.model_name, "n": body.n}
        job = store.create_run(
            session, kind=Kind.COMPOSE, spec=spec, model=model, inputs={"chain_run": chain.id}, owner=owner
        )
        jobs.transition(session, job, "running")
        row = {
            "index": 0,
            "block": vectors[0].block,
            "values": geometry.to_bytes(composed),
            "norm": float((composed**2).sum() ** 0.5),
            "metrics": {"composition_of": body.n, "chain_run": chain.id},
        }
        vector = store.add_vectors(session, job.run, [row])[0]
        jobs.transition(session, job, "succeeded", message=f"mean of the first {body.n} vectors × √{body.n}")
        vector_id, run_id = vector.id, job.run_id
    samples = schemas.SamplesCreate(
        vector_ids=[vector_id], prompts=prompts, max_new_tokens=service.settings.gallery_tokens
    )
    return Composed(run_id, vector_id, start_samples(service, samples, owner=owner, for_run=run_id))


def start_concept(service: Service, body: schemas.ConceptCreate, *, owner: str = "") -> Job:
    """A concept: its two prompt sets checked against the model (the block resolved), then its run.
    The run's prompts are the without set: where its gallery shows what adding the concept does."""
    checked = service.validate(Kind.CONCEPT, body.spec())
    spec = {**checked["spec"], "prompts": list(checked["spec"]["negative"])}
    return _queue(service, Kind.CONCEPT, {**checked, "spec": spec}, priority=body.priority, owner=owner)


def start_dashboard(
    service: Service, vector_id: int, body: schemas.DashboardCreate, *, owner: str = ""
) -> Job:
    """A stored vector's dashboard, read on its run's prompts and the model's corpus (the corpus is
    built by this job where it is missing, then cached by the worker)."""
    s = service.settings
    with service.db.session() as session:
        vector = store.get_vector(session, vector_id)
        if vector.is_adapter:
            raise Invalid(f"vector {vector.id} is a steering adapter; its dashboard reads steering vectors")
        run = vector.run
        model = session.get(LanguageModel, run.model_id) if run.model_id is not None else None
        if model is None:
            raise Invalid(f"vector {vector.id}'s run names no model the server has seen")
        # The downstream search reads the block whose output the run's objective looked at (its
        # target is a hidden_states index: block target - 1's output); a run without one has none.
        downstream = run.target - 1 if run.target is not None and run.target - 1 > vector.block else None
        spec = {
            "model": run.model_name,
            "block": vector.block,
            "downstream": downstream,
            "prompts": list(dict.fromkeys(str(p) for p in run.prompts)),
            "rank_by": body.rank_by,
            "bank_prompts": s.corpus_bank,
            "max_new_tokens": s.corpus_tokens,
        }
        job = store.create_run(
            session,
            kind=Kind.DASHBOARD,
            spec=spec,
            model=model,
            priority=body.priority,
            owner=owner,
            parent_vector_id=vector_id,
        )
    service.notify()
    return job
