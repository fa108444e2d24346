"""Pages for runs: what a run resolved, its progress while it is live, its gallery (whose view lives
in the URL), its plots, and a chain's composition test.

A page opened while its job runs carries the SSE connection that keeps it current and fetches
itself again when the job ends; a finished run's page carries no stream at all.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from sqlalchemy import select

from app import jobs, kinds, schemas, store
from app.deps import FormDep, ServiceDep, SessionDep
from app.discovery import detectors, findings
from app.fields import MaybeWhole, Text, Whole, whole
from app.labels import labelling
from app.models import Job, JobEvent, Run, now
from app.runs import facts, gallery, launch, summary
from app.templating import render
from app.vectors import dashboard, interop

router = APIRouter(include_in_schema=False)

# The recorder queues a learned run's automatic scoring in a transaction of its own right after it
# stores the end of the run's last job (its own or its twin's); a busy writer can take a moment.
SCORING_QUEUE_GRACE = timedelta(seconds=30)


def job_of(session: Any, run: Run) -> Job | None:
    return session.scalars(select(Job).where(Job.run_id == run.id).order_by(Job.id.desc())).first()


def is_live(job: Job | None) -> bool:
    return job is not None and job.status not in jobs.FINISHED


def last_progress(session: Any, job: Job | None) -> dict[str, Any]:
    """The newest progress event's fields (whatever the worker reports), the curve points left out."""
    if job is None:
        return {}
    event = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.type == "progress")
        .order_by(JobEvent.id.desc())
        .limit(1)
    ).first()
    return {k: v for k, v in (event.data if event else {}).items() if k != "points"}


def working_job(session: Any, run: Run) -> Job | None:
    """The job a run's page follows: the run's own while it is live, else a live one working for
    the run's page (its samples, its scoring), else, while the run waits for its automatic scoring,
    its random twin's (the scoring is queued as the twin ends), else the run's own, finished."""
    own = job_of(session, run)
    if is_live(own):
        return own
    helper = session.scalars(
        select(Job)
        .join(Run, Job.run_id == Run.id)
        .where(
            Run.kind.in_([k for k, info in kinds.table().items() if info.helps]),
            Run.inputs["for_run"].as_integer() == run.id,
            Job.status.in_(("queued", "running")),
        )
        .order_by(Job.id)
        .limit(1)
    ).first()
    if helper is not None:
        return helper
    if kinds.of(run.kind).scoring == "auto" and run.status == "succeeded" and "discovery" not in run.result:
        twin = findings.twin_of(session, run)
        twin_job = job_of(session, twin) if twin is not None else None
        if is_live(twin_job):
            return twin_job
    return own


def awaiting_scoring(session: Any, run: Run, auto_score: bool) -> bool:
    """On a server that scores runs by itself: the run's jobs (its own and its twin's) have all
    ended, the last just now, and its scoring is not queued yet. The recorder is about to queue it,
    so the page keeps following (else it would stop in that gap and never learn its scores came)."""
    if not auto_score or run.twin_of is not None or kinds.of(run.kind).scoring != "auto":
        return False
    if run.status != "succeeded" or "discovery" in run.result:
        return False
    twin = findings.twin_of(session, run)
    ran = [j for j in (job_of(session, run), job_of(session, twin) if twin else None) if j is not None]
    if any(j.status not in jobs.FINISHED or j.finished_at is None for j in ran) or not ran:
        return False
    last = max(j.finished_at for j in ran if j.finished_at is not None)
    return now() - last <= SCORING_QUEUE_GRACE and findings.scoring_job(session, run) is None


def status_context(session: Any, run: Run, auto_score: bool) -> dict[str, Any]:
    """What the live parts of a run page show: progress, resolved values, settings. `auto_score`:
    whether this server queues a learned run's scoring when it ends."""
    job = working_job(session, run)
    stats = facts.vector_stats(session, run)
    return {
        "run": run,
        "job": job,
        "live": is_live(job) or awaiting_scoring(session, run, auto_score),
        "stats": stats,
        "report": last_progress(session, job),
        "facts": summary.facts(run, job, stats),
        "settings": summary.settings(run),
    }


# the gallery's view, from the URL


def _number(value: str, label: str, problems: list[str]) -> float | None:
    """A filter field: blank means no filter; what is not a number is said in words (and left out)."""
    if not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        problems.append(f"{label}: {value.strip()!r} is not a number")
        return None
    return number


def gallery_query(
    sort: str = "interesting",
    desc: bool = False,
    page: Whole = 1,
    min_kl: str = "",
    min_objective: str = "",
    label: MaybeWhole = None,
    q: Text = "",
    pick: Annotated[list[Whole] | None, Query()] = None,
    behaviour: MaybeWhole = None,
    group: bool = False,
    detector: MaybeWhole = None,
    min_detector: str = "",
    concept: MaybeWhole = None,
    min_cosine: str = "",
) -> gallery.Query:
    """The gallery's view from the URL; a blank number filter means no filter, and a malformed one
    is left out with a problem the gallery states."""
    problems: list[str] = []
    return gallery.Query(
        sort=sort if sort in gallery.SORTS else "interesting",
        desc=desc,
        page=page,
        min_kl=_number(min_kl, "KL ≥", problems),
        min_objective=_number(min_objective, "objective ≥", problems),
        label=label,
        q=q,
        pick=list(dict.fromkeys(pick or [])),
        behaviour=behaviour,
        group=group,
        detector=detector,
        min_detector=_number(min_detector, "score ≥", problems),
        concept=concept,
        min_cosine=_number(min_cosine, "cosine ≥", problems),
        problems=problems,
    )


GalleryQuery = Annotated[gallery.Query, Depends(gallery_query)]


def gallery_context(session: Any, run: Run, query: gallery.Query) -> dict[str, Any]:
    page = gallery.gallery(session, run, query)
    on_page = {c.vector.id for c in page.cards}
    return {
        "run": run,
        "page": page,
        "sorts": list(gallery.SORTS),
        "facets": labelling.facets(session, run.id),
        "picked_elsewhere": [i for i in query.pick if i not in on_page],
        "behaviours": findings.behaviours_of(session, run.id),
        "detectors": detectors.all_detectors(session),
        "concepts": dashboard.concepts_for_run(session, run),
        "colour": gallery.behaviour_colour,
    }


# a run


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def show_run(
    run_id: Whole, request: Request, session: SessionDep, service: ServiceDep, query: GalleryQuery
) -> HTMLResponse:
    run = store.get_run(session, run_id)
    info = kinds.of(run.kind)
    context = {
        **status_context(session, run, service.settings.auto_score),
        **gallery_context(session, run, query),
        "info": info,
        "piece": info.context(session, run) if info.context else None,
        "twin": findings.twin_of(session, run),
        "twin_parent": session.get(Run, run.twin_of) if run.twin_of else None,
        "n_behaviours": len([b for b in findings.behaviours_of(session, run.id) if b.kind == "cluster"]),
    }
    return render(request, "runs/show.html", context)


def phase_ends(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of the progress events a stream was sent since its last look, the last of each phase they
    pass through, in order: a busy server may read a short phase's events only once the job is past
    it, and the page should still name that phase."""
    reports = [m for m in messages if m.get("type") == "progress" and m.get("phase")]
    return [
        r for i, r in enumerate(reports) if i + 1 == len(reports) or reports[i + 1]["phase"] != r["phase"]
    ]


@router.get("/runs/{run_id}/live")
def run_live(run_id: Whole, request: Request, service: ServiceDep) -> StreamingResponse:
    """SSE for a run page opened while its job is live: the progress and summary partials whenever
    the job reports, then `finished` (the page then fetches itself again and drops the stream)."""
    templates = request.app.state.templates
    with service.db.session() as session:
        job = working_job(session, store.get_run(session, run_id))
    job_id = job.id if job is not None else None

    def snapshot(passed: list[dict[str, Any]]) -> tuple[list[str], str, bool]:
        """The live partials (first the progress of each phase `passed`, as it was reported, then
        the job as it is now), and whether this stream is done: the page stops following its job
        when no job is live any more, or fetches itself again to follow the next (its twin's, then
        its scoring)."""
        progress = templates.get_template("runs/_progress.html")
        with service.db.session() as session:
            run = store.get_run(session, run_id)
            context = {**status_context(session, run, service.settings.auto_score), "request": request}
            now = context["job"]
            following = now is not None and now.id == job_id
            if passed and following and passed[-1]["phase"] == context["report"].get("phase"):
                passed = passed[:-1]  # the phase it is still in: shown as it is now, below
            followed = session.get(Job, job_id) if passed else None
            was = [
                progress.render({**context, "job": followed, "live": True, "report": report, "said": report})
                for report in passed
            ]
            facts = templates.get_template("runs/_summary.html").render(context)
            return [*was, progress.render(context)], facts, not context["live"] or not following

    def data(html: str) -> str:
        return "\n".join(f"data: {line}" for line in html.splitlines())

    async def events() -> AsyncIterator[str]:
        if job_id is None:
            yield "event: finished\ndata: done\n\n"
            return
        with service.broker.subscribe(f"job:{job_id}") as sub:
            passed: list[dict[str, Any]] = []
            while True:
                progresses, facts, finished = await asyncio.to_thread(snapshot, passed)
                for progress in progresses:
                    yield f"event: progress\n{data(progress)}\n\n"
                yield f"event: summary\n{data(facts)}\n\n"
                if finished:
                    yield "event: finished\ndata: done\n\n"
                    return
                if await request.is_disconnected() or sub.closed:
                    return
                woken = await sub.next(15.0)
                passed = phase_ends([woken, *sub.pending()]) if woken else []

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/runs/{run_id}/gallery", response_class=HTMLResponse)
def run_gallery(run_id: Whole, request: Request, session: SessionDep, query: GalleryQuery) -> HTMLResponse:
    """The gallery partial; asked for by the page, it also puts its view in the address bar."""
    run = store.get_run(session, run_id)
    response = render(request, "runs/_gallery.html", gallery_context(session, run, query))
    if request.headers.get("HX-Request"):
        url = f"/runs/{run.id}?{query.url()}".rstrip("?")
        response.headers["HX-Push-Url"] = url
    return response


@router.get("/runs/{run_id}/map.json")
def run_map(run_id: Whole, session: SessionDep) -> dict[str, Any]:
    return gallery.vector_map(session, store.get_run(session, run_id))


@router.get("/runs/{run_id}/curves.json")
def run_curves(run_id: Whole, session: SessionDep) -> list[dict[str, Any]]:
    """Each stored vector's objective at every step (what the live curves showed while it trained)."""
    return [
        {"index": v.index, "id": v.id, "curve": v.metrics.get("curve", [])}
        for v in store.get_run(session, run_id).vectors
    ]


@router.get("/runs/{run_id}/chain.json")
def chain_series(run_id: Whole, session: SessionDep) -> dict[str, Any]:
    vectors = store.get_run(session, run_id).vectors
    return {
        "index": [v.index for v in vectors],
        "id": [v.id for v in vectors],
        "norm": [v.norm for v in vectors],
        "loss": [v.objective for v in vectors],
        "kl": [v.kl for v in vectors],
    }


@router.post("/runs/{run_id}/samples", response_class=HTMLResponse)
def sample(run_id: Whole, service: ServiceDep) -> Response:
    """Generate the gallery samples of a run that has none (an import): the page then follows them."""
    interop.sample_run(service, run_id)
    return Response(status_code=204, headers={"HX-Redirect": f"/runs/{run_id}"})


@router.post("/runs/{run_id}/compose", response_class=HTMLResponse)
def compose(run_id: Whole, service: ServiceDep, form: FormDep) -> Response:
    """The composition test: mean of the chain's first n vectors × √n, stored as a vector and sampled."""
    body = schemas.CompositionCreate(chain_run=run_id, n=whole(str(form.get("n", "")), "n"))
    composed = launch.start_composition(service, body)
    return Response(status_code=204, headers={"HX-Redirect": f"/vectors/{composed.vector_id}"})
