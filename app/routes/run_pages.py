"""Pages for runs: the new-run form, a run's live progress and gallery, chains and their composition test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import select

from app import forms, gallery, geometry, jobs, labels, launch, schemas, store
from app.deps import ServiceDep, SessionDep
from app.errors import AppError, Invalid, NotFound
from app.models import Job, LanguageModel, Run, Vector

router = APIRouter(include_in_schema=False)
COMPOSE_CHOICES = (2, 4, 8, 16, 32)


def render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request, template, context, status_code=status_code
    )
    return response


def model_names(session: Any, default: str) -> list[str]:
    names = [m for m in session.scalars(select(LanguageModel.name).order_by(LanguageModel.id))]
    return [default, *[n for n in names if n != default]]


def get_run(session: Any, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run {run_id}")
    return run


def job_of(session: Any, run: Run) -> Job | None:
    return session.scalars(select(Job).where(Job.run_id == run.id).order_by(Job.id.desc())).first()


# the new-run form


@router.get("/runs/new", response_class=HTMLResponse)
def new_run(request: Request, session: SessionDep, service: ServiceDep) -> HTMLResponse:
    values = {
        "model": service.settings.default_model,
        "method": "melbo",
        "n_vectors": "8",
        "positions": "user",
        "p": "2",
        "seed": "0",
        "prompts": "",
        "orthogonal": True,
        "normalize": False,
        "mode": "fast",
        "loss": "token",
    }
    return render(
        request,
        "runs/new.html",
        {"values": values, "errors": {}, "models": model_names(session, service.settings.default_model)},
    )


@router.post("/runs/new", response_class=HTMLResponse)
async def create_run(request: Request, session: SessionDep, service: ServiceDep) -> Response:
    values = forms.run_values(await request.form())
    body, errors = forms.run_body(values)
    if body is not None:
        try:
            job = await _in_thread(launch.start_melbo, service, body)
        except AppError as exc:
            errors = {forms.field_for(exc.message): exc.message}
        else:
            url = f"/runs/{job.run_id}"
            if request.headers.get("HX-Request"):
                return Response(status_code=204, headers={"HX-Redirect": url})
            return RedirectResponse(url, status_code=303)
    context = {
        "values": values,
        "errors": errors,
        "models": model_names(session, service.settings.default_model),
    }
    return render(
        request,
        "runs/_form.html" if request.headers.get("HX-Request") else "runs/new.html",
        context,
        status_code=422,
    )


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)  # worker round trips must not block the event loop


@router.post("/runs/preview", response_class=HTMLResponse)
async def preview(request: Request, service: ServiceDep) -> HTMLResponse:
    form = await request.form()
    prompts = [p.strip() for p in str(form.get("prompts", "")).splitlines() if p.strip()]
    model = str(form.get("model") or service.settings.default_model)
    context: dict[str, Any] = {"prompts": prompts, "error": ""}
    if prompts:
        try:
            context["shown"] = await _in_thread(
                service.ask, {"type": "render", "model": model, "prompts": prompts}
            )
        except AppError as exc:
            context["error"] = exc.message
    return render(request, "runs/_preview.html", context)


@router.post("/runs/calibrate", response_class=HTMLResponse)
async def calibrate(request: Request, service: ServiceDep) -> HTMLResponse:
    form = await request.form()
    fields = {k: str(form.get(k, "")) for k in ("model", "source", "target", "positions")}
    data: dict[str, Any] = {k: v for k, v in fields.items() if v}
    data["prompts"] = [p.strip() for p in str(form.get("prompts", "")).splitlines() if p.strip()]
    for k in ("source", "target"):
        if k in data:
            data[k] = int(data[k]) if data[k].lstrip("-").isdigit() else data[k]
    try:
        body = schemas.CalibrationCreate.model_validate(data)
        job = await _in_thread(launch.start_calibration, service, body)
    except (AppError, ValueError) as exc:
        return render(
            request, "runs/_calibration.html", {"error": getattr(exc, "message", str(exc)), "job": None}
        )
    return render(request, "runs/_calibration.html", {"job": job, "error": "", "radius": None})


@router.get("/runs/calibrate/{job_id}", response_class=HTMLResponse)
def calibration_status(job_id: int, request: Request, session: SessionDep) -> HTMLResponse:
    job = jobs.get(session, job_id)
    radius = job.run.radius if job.status == "succeeded" else None
    return render(request, "runs/_calibration.html", {"job": job, "error": job.error, "radius": radius})


# a run: progress, gallery, map


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def show_run(run_id: int, request: Request, session: SessionDep) -> HTMLResponse:
    run = get_run(session, run_id)
    context: dict[str, Any] = {"run": run, "job": job_of(session, run), "compose_choices": COMPOSE_CHOICES}
    if run.kind == "chain":
        context["parent"] = session.get(Vector, run.parent_vector_id) if run.parent_vector_id else None
        context["compositions"] = session.scalars(
            select(Run)
            .where(Run.kind == "compose", Run.inputs["chain_run"].as_integer() == run.id)
            .order_by(Run.id)
        ).all()
    return render(request, "runs/show.html", context)


@router.get("/runs/{run_id}/progress", response_class=HTMLResponse)
def run_progress(run_id: int, request: Request, session: SessionDep) -> HTMLResponse:
    run = get_run(session, run_id)
    return render(request, "runs/_progress.html", {"run": run, "job": job_of(session, run)})


@router.get("/runs/{run_id}/live")
async def run_live(run_id: int, request: Request, service: ServiceDep) -> StreamingResponse:
    """SSE of rendered progress partials (for htmx's SSE extension); ends when the job does."""
    templates = request.app.state.templates

    def snapshot() -> tuple[str, bool]:
        with service.db.session() as session:
            run = get_run(session, run_id)
            job = job_of(session, run)
            html = templates.get_template("runs/_progress.html").render(
                {"run": run, "job": job, "request": request}
            )
            return html, job is None or job.status in jobs.FINISHED

    async def events() -> AsyncIterator[str]:
        with service.db.session() as session:
            job = job_of(session, get_run(session, run_id))
        if job is None:
            return
        with service.broker.subscribe(f"job:{job.id}") as sub:
            while True:
                html, finished = await _in_thread(snapshot)
                yield f"event: progress\ndata: {html.replace(chr(10), ' ')}\n\n"
                if finished:
                    yield "event: finished\ndata: done\n\n"
                    return
                if await request.is_disconnected():
                    return
                await sub.next(15.0)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _number(value: str) -> float | None:
    """A filter field: blank (or not a number) means no filter."""
    try:
        return float(value) if value.strip() else None
    except ValueError:
        return None


def gallery_query(
    sort: str = "index",
    desc: bool = False,
    page: int = 1,
    min_kl: str = "",
    min_objective: str = "",
    label: str = "",
    q: str = "",
) -> gallery.Query:
    """The gallery's view from the URL; blank or malformed filters mean no filter."""
    return gallery.Query(
        sort=sort if sort in gallery.SORTS else "index",
        desc=desc,
        page=page,
        min_kl=_number(min_kl),
        min_objective=_number(min_objective),
        label=int(label) if label.isdigit() else None,
        q=q,
    )


GalleryQuery = Annotated[gallery.Query, Depends(gallery_query)]


@router.get("/runs/{run_id}/gallery", response_class=HTMLResponse)
def run_gallery(run_id: int, request: Request, session: SessionDep, query: GalleryQuery) -> HTMLResponse:
    run = get_run(session, run_id)
    context = {
        "run": run,
        "page": gallery.gallery(session, run, query),
        "sorts": list(gallery.SORTS),
        "facets": labels.facets(session, run.id),
    }
    return render(request, "runs/_gallery.html", context)


@router.get("/runs/{run_id}/map.json")
def run_map(run_id: int, session: SessionDep) -> list[dict[str, Any]]:
    return gallery.vector_map(session, get_run(session, run_id))


@router.get("/runs/{run_id}/chain.json")
def chain_series(run_id: int, session: SessionDep) -> dict[str, Any]:
    vectors = get_run(session, run_id).vectors
    return {
        "index": [v.index for v in vectors],
        "norm": [v.norm for v in vectors],
        "loss": [v.objective for v in vectors],
        "kl": [v.kl for v in vectors],
    }


@router.post("/runs/{run_id}/compose", response_class=HTMLResponse)
async def compose(run_id: int, request: Request, service: ServiceDep) -> Response:
    """The composition test: mean of the chain's first n vectors × √n, stored as a vector and sampled."""
    form = await request.form()
    raw = str(form.get("n", ""))
    with service.db.session() as session:
        chain = get_run(session, run_id)
        vectors = list(chain.vectors)
        if not raw.isdigit() or not 1 <= int(raw) <= len(vectors):
            raise Invalid(f"n must be between 1 and the chain's length {len(vectors)}, got {raw!r}")
        n = int(raw)
        composed = geometry.composition(geometry.stack([v.values for v in vectors]), n)
        model = session.get(LanguageModel, chain.model_id)
        assert model is not None
        prompts = [str(p) for p in chain.prompts]
        spec = {"prompts": prompts, "model": chain.model_name, "n": n}
        job = store.create_run(
            session, kind="compose", spec=spec, model=model, inputs={"chain_run": chain.id}
        )
        jobs.transition(job, "running")
        values = geometry.to_bytes(composed)
        row = {
            "index": 0,
            "block": vectors[0].block,
            "values": values,
            "norm": float((composed**2).sum() ** 0.5),
            "metrics": {"composition_of": n, "chain_run": chain.id},
        }
        vector = store.add_vectors(session, job.run, [row])[0]
        jobs.transition(job, "succeeded", message=f"mean of the first {n} vectors × √{n}")
        vector_id = vector.id
    body = schemas.SamplesCreate(
        vector_ids=[vector_id], prompts=prompts, max_new_tokens=service.settings.gallery_tokens
    )
    await _in_thread(launch.start_samples, service, body)
    return Response(status_code=204, headers={"HX-Redirect": f"/vectors/{vector_id}"})
