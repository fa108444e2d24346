"""The one table of run kinds: what each kind of run is, and everything the app does differently
for it. Nothing else in the app writes a kind as a string; code branches on the table's fields.

A new method lands as one entry here (its settings body, the worker task that runs it, its page
piece and its facts), with no edit to the pages, the dispatcher or the completion check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.models import Job, Run
    from app.runs.facts import Fact, VectorStats
    from app.schemas import Body


class Kind(StrEnum):
    MELBO = "melbo"
    RANDOM = "random"
    DCT = "dct"
    ADAPTER = "adapter"
    CHAIN = "chain"
    COMPOSE = "compose"
    IMPORT = "import"
    RPATH = "rpath"
    GENERALIZE = "generalize"
    SEARCH = "search"
    CALIBRATE = "calibrate"
    GENERATE = "generate"
    SCORE = "score"
    DETECT = "detect"
    SCALE_SWEEP = "scale_sweep"
    CONCEPT = "concept"
    DASHBOARD = "dashboard"


Scoring = Literal["auto", "on request", "never"]
Facts = Callable[["Run", "Job | None", "VectorStats"], list["Fact"]]
PageContext = Callable[["Session", "Run"], Any]
OrderExtras = Callable[["Session", "Run"], dict[str, Any]]


@dataclass(frozen=True)
class KindInfo:
    kind: Kind
    title: str  # what a page calls one run of this kind
    group: str  # the home page's heading for these runs, or the word counting bookkeeping ones
    facts: Facts  # what the run page's summary says the run resolved
    settings: type[Body] | None = None  # the API body whose fields describe its settings
    task: str | None = None  # its module in app/executor/tasks (None: stored at once, no worker job)
    listed: bool = True  # listed on the home page (False: bookkeeping for another page, counted)
    vectors: bool = True  # it stores vectors, shown in a gallery on its page
    gallery: bool = False  # its job samples every vector on its prompts beside the unsteered model
    working_scale: bool = False  # its gallery probes each vector's working scale and shows it there too
    trained: bool = False  # its vectors come from training: objective curves, the 2-D map
    curves: bool = False  # its vectors' objective curves are worth a plot
    counted: bool = False  # it must store as many vectors as it asked for to succeed
    refines: bool = False  # it refines a stored vector (its parent) into new vectors
    answered: bool = False  # its result is one answer, sent when the job ends
    scoring: Scoring = "on request"  # whether its gallery is scored (auto: once it and its twin end)
    helps: str = ""  # works for another run's page (inputs.for_run): what it is doing there
    samples_on_request: bool = False  # its gallery is sampled on request, not by its own job
    adapters: bool = False  # its vectors may be steering adapters, resumed with their factors
    orthogonal: bool = False  # a run whose `orthogonal` setting keeps each vector off the earlier ones
    twin: Kind | None = None  # the kind of its random twin, trained right behind it
    twin_spec: dict[str, Any] = field(default_factory=dict)  # what the twin changes in its spec
    page: str = ""  # its own piece of the run page (a template)
    context: PageContext | None = None  # what its page piece needs
    order: OrderExtras | None = None  # what its job's order adds to its spec when it is dispatched
    command: str = ""  # its `steerscope` subcommand ("": none)
    launch: Callable[..., Job] | None = None  # starts one: (service, body, owner=) or, on_vector, with the id
    on_vector: bool = False  # it starts from a stored vector (the API takes its id in the path)
    about: str = ""  # the subcommand's help
    method: str = ""  # its name in the new-run form's method menu ("": not offered there)
    route: str = ""  # POST /api/<route> starts one from its settings body ("": no such route)


def of(kind: str) -> KindInfo:
    """The table's entry for a kind (an unknown kind is a bug of ours: KeyError)."""
    return table()[Kind(kind)]


def methods() -> list[tuple[Kind, str]]:
    """The new-run form's methods: (kind, what the menu calls it)."""
    return [(k, info.method) for k, info in table().items() if info.method]


def where(**fields: object) -> tuple[Kind, ...]:
    """The kinds whose entries have these values, e.g. `where(gallery=True)`."""
    return tuple(k for k, info in table().items() if all(getattr(info, f) == v for f, v in fields.items()))


@cache
def table() -> dict[Kind, KindInfo]:
    # Imported here, not at the top: these modules read the table themselves.
    from app import schemas
    from app.discovery import detectors, findings
    from app.refine import refinements, scale_sweep
    from app.runs import facts, launch, pieces

    rows = [
        KindInfo(
            Kind.MELBO,
            "MELBO run",
            "MELBO runs",
            facts.trained,
            schemas.MelboCreate,
            "melbo",
            gallery=True,
            working_scale=True,
            trained=True,
            curves=True,
            counted=True,
            scoring="auto",
            orthogonal=True,
            twin=Kind.RANDOM,
            twin_spec={"method": Kind.RANDOM},
            command="train",
            launch=launch.start_melbo,
            about="train MELBO vectors (or a random baseline, DCT, or steering adapters)",
            route="runs",
            method="MELBO",
        ),
        KindInfo(
            Kind.RANDOM,
            "Random baseline",
            "Random baselines",
            facts.trained,
            schemas.MelboCreate,
            "melbo",  # MELBO's procedure with 0 steps
            gallery=True,
            working_scale=True,
            trained=True,
            counted=True,
            orthogonal=True,
            method="random baseline (0 steps)",
        ),
        KindInfo(
            Kind.DCT,
            "DCT run",
            "DCT runs",
            facts.trained,
            schemas.MelboCreate,
            "dct",
            gallery=True,
            working_scale=True,
            trained=True,
            counted=True,
            scoring="auto",
            method="DCT (Deep Causal Transcoding)",
        ),
        KindInfo(
            Kind.ADAPTER,
            "Adapter run",
            "Adapter runs",
            facts.adapter,
            schemas.MelboCreate,
            "adapters",
            gallery=True,
            trained=True,
            counted=True,
            scoring="auto",
            adapters=True,
            twin=Kind.ADAPTER,  # random adapters of the same rank: no training steps
            twin_spec={"steps": 0},
            method="steering adapters (LoRA)",
        ),
        KindInfo(
            Kind.CHAIN,
            "Chain",
            "Chains",
            facts.chain,
            schemas.ChainCreate,
            "chain",
            gallery=True,
            trained=True,
            scoring="auto",
            page="runs/_chain.html",
            context=pieces.chain,
            command="chain",
            launch=launch.start_chain,
            about="grow an orthogonal chain from a stored vector",
            route="chains",
        ),
        KindInfo(
            Kind.COMPOSE,
            "Composition",
            "Compositions",
            facts.plain,
            schemas.CompositionCreate,
            samples_on_request=True,
        ),
        KindInfo(
            Kind.IMPORT, "Imported vectors", "Imported vectors", facts.imported, samples_on_request=True
        ),
        KindInfo(
            Kind.RPATH,
            "R-path",
            "R-paths",
            facts.refined,
            schemas.RPathCreate,
            "rpath",
            gallery=True,
            refines=True,
            page="refine/_rpath.html",
            context=refinements.rpath,
            command="rpath",
            launch=launch.start_rpath,
            on_vector=True,
            about="train a stored vector again at several multiples of its norm (its R-path)",
        ),
        KindInfo(
            Kind.GENERALIZE,
            "Generalization",
            "Generalizations",
            facts.refined,
            schemas.GeneralizeCreate,
            "generalize",
            gallery=True,
            refines=True,
            page="refine/_generalize.html",
            context=refinements.generalize,
            command="generalize",
            launch=launch.start_generalize,
            on_vector=True,
            about="train a stored vector further on more prompts, compared on held-out ones",
        ),
        KindInfo(
            Kind.SEARCH,
            "Search",
            "Searches",
            facts.search,
            schemas.SearchCreate,
            "search",
            gallery=True,
            refines=True,
            page="refine/_search.html",
            context=refinements.search,
            command="search",
            launch=launch.start_search,
            on_vector=True,
            about="search around a stored vector for completions a detector scores higher",
        ),
        KindInfo(
            Kind.CALIBRATE,
            "Calibration",
            "calibrations",
            facts.calibration,
            schemas.CalibrationCreate,
            "calibrate",
            listed=False,
            vectors=False,
            scoring="never",
            command="calibrate",
            launch=launch.start_calibration,
            about="calibrate R for a model, prompts and blocks",
            route="calibrations",
        ),
        KindInfo(
            Kind.GENERATE,
            "Samples",
            "sample jobs",
            facts.plain,
            schemas.SamplesCreate,
            "samples",
            listed=False,
            vectors=False,
            scoring="never",
            helps="generating samples",
            page="runs/_samples_of.html",
            command="generate",
            launch=launch.start_samples,
            about="generate completions of stored vectors at given scales",
            route="sample-jobs",
        ),
        KindInfo(
            Kind.SCORE,
            "Scoring",
            "scorings",
            facts.plain,
            task="score",
            listed=False,
            vectors=False,
            answered=True,
            scoring="never",
            helps="scoring",
            page="runs/_for_run.html",
            order=findings.scored_rows,
        ),
        KindInfo(
            Kind.DETECT,
            "Judging",
            "judge runs",
            facts.plain,
            task="detect",
            listed=False,
            vectors=False,
            answered=True,
            scoring="never",
            helps="judging",
            page="runs/_for_run.html",
            order=detectors.judged_rows,
        ),
        KindInfo(
            Kind.SCALE_SWEEP,
            "Scale sweep",
            "scale sweeps",
            facts.scale_sweep,
            schemas.ScaleSweepCreate,
            "scale_sweep",
            listed=False,
            vectors=False,
            answered=True,
            scoring="never",
            page="refine/_sweep.html",
            context=scale_sweep.grid,
            command="scale-sweep",
            launch=launch.start_scale_sweep,
            on_vector=True,
            about="sweep a stored vector's scale: where it changes the answer, where it breaks",
        ),
        KindInfo(
            Kind.CONCEPT,
            "Concept",
            "Concepts",
            facts.concept,
            schemas.ConceptCreate,
            "concept",
            scoring="never",
            samples_on_request=True,
            page="runs/_concept.html",
            launch=launch.start_concept,
            command="concept",
            about="make a concept: a direction at a block from prompts with it and without it",
            route="concepts",
        ),
        KindInfo(
            Kind.DASHBOARD,
            "Dashboard",
            "dashboards",
            facts.plain,
            schemas.DashboardCreate,
            "dashboard",
            listed=False,
            vectors=False,
            scoring="never",
            launch=launch.start_dashboard,
            command="dashboard",
            on_vector=True,
            about="read a stored vector: the tokens it pushes, where it occurs in the model's corpus",
        ),
    ]
    return {row.kind: row for row in rows}
