"""Every message between the server and its workers, typed on both sides of the pipe (and of Ray).

A message is a frozen dataclass; its class is its discriminator, so a receiver dispatches with
`match` and mypy checks that every kind is handled. They travel pickled, vectors as float32 bytes.
Rows of generations, vectors and scores stay plain dicts: they are stored as they come.

To a worker: a job's order, a cancel, a stop, a shutdown, or a request it answers with a `Reply`
(chat and generation requests also stream `Token`s or `ChatTokens` before it). From a worker:
`Ready`, `Resident`, replies and tokens of requests, and the events of the job it runs, each
tagged with the job's id and attempt.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

# to a worker


@dataclass(frozen=True)
class Order:
    """A job for a worker: what to run, and what an earlier attempt already stored."""

    job_id: int
    attempt: int
    kind: str  # the run's kind (app/kinds.py), for the worker's messages
    task: str  # the module of app/executor/tasks that carries it out
    spec: dict[str, Any]  # the engine spec, validated
    done: list[bytes] = field(default_factory=list)  # stored vectors of this run, in index order
    theta0: bytes | None = None  # the vector a chain or a refinement starts from
    # (id, block, values): a generate job's vectors; those a refinement stays orthogonal to
    vectors: list[tuple[int, int, bytes]] = field(default_factory=list)
    # prompts, max_new_tokens, batch, done (index, prompt, scale) triples, probe, working scales found
    gallery: dict[str, Any] = field(default_factory=dict)
    # The steering adapters among `done` and `vectors` (app/executor/codec.py's payload, with the
    # vector's "id" and "index"): they steer with their factors, not their values.
    adapters: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RunJob:
    order: Order


@dataclass(frozen=True)
class Cancel:
    """Stop the job between two units; it reports what it finished, then `Finished`."""

    job: int


@dataclass(frozen=True)
class Stop:
    """Stop a request (a chat reply, a generation); what it wrote so far is its answer."""

    id: str


@dataclass(frozen=True)
class Shutdown:
    pass


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, kw_only=True)
class Request:
    """An interactive request: answered by one `Reply` with the same id, between two units."""

    model: str  # the model it runs on (loaded on demand)
    id: str = field(default_factory=new_id)


@dataclass(frozen=True, kw_only=True)
class Validate(Request):
    """Check a job spec against its model: the normalized spec and the model's info."""

    kind: str
    spec: dict[str, Any]
    reserve: int = 0  # new tokens generated after the prompts, which must fit in the context


@dataclass(frozen=True, kw_only=True)
class Render(Request):
    """How the model sees each prompt (its chat template), its length, and the default blocks."""

    prompts: list[str]


@dataclass(frozen=True, kw_only=True)
class CheckChat(Request):
    """Every check decoding a chat's rows would make, without decoding."""

    rows: list[dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Downstream(Request):
    """Cosines between vectors' effects at the target block on one prompt."""

    prompt: str
    block: int
    target: int | None
    vectors: list[bytes]
    adapters: list[dict[str, Any]]  # codec payloads, each with its "position" among `vectors`


@dataclass(frozen=True, kw_only=True)
class ExportVectors(Request):
    """Vectors as a safetensors or GGUF file (the file's bytes)."""

    format: str
    vectors: list[bytes]
    blocks: list[int]
    metadata: dict[str, Any]
    model_hint: str = ""


@dataclass(frozen=True, kw_only=True)
class ParseVectors(Request):
    """An uploaded vector file read (never unpickled) and checked against the model's width."""

    data: bytes
    name: str
    max_bytes: int


@dataclass(frozen=True, kw_only=True)
class ExportPeft(Request):
    """A steering adapter as the files of a PEFT LoRA folder."""

    adapter: dict[str, Any]
    metadata: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ScoreConcept(Request):
    """A concept as a detector: each prompt's score (its largest projection on the concept) and
    whether it passes the concept's threshold."""

    vector: bytes
    concept: dict[str, Any]  # what the concept's run stored (engine Concept.to_dict)
    prompts: list[str]


@dataclass(frozen=True, kw_only=True)
class Chat(Request):
    """A chat turn: one row per pane, streamed as `ChatTokens`."""

    rows: list[dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Generate(Request):
    """Generation rows (steered and unsteered); with `stream`, row 0 streams as `Token`s."""

    rows: list[dict[str, Any]]
    stream: bool = False


ToWorker = RunJob | Cancel | Stop | Shutdown | Request


# from a worker


@dataclass(frozen=True)
class Ready:
    pid: int
    node: str = ""


@dataclass(frozen=True)
class Resident:
    """The models a worker holds now (where requests for them are best sent)."""

    models: list[str]


@dataclass(frozen=True)
class Reply:
    """The answer to a request: its value, or a user-facing error (or an internal one, with a trace)."""

    id: str
    ok: bool
    value: Any = None
    error: str = ""
    internal: bool = False
    trace: str = ""


@dataclass(frozen=True)
class Token:
    """A piece of a streamed generation's text."""

    id: str
    row: int
    text: str


@dataclass(frozen=True)
class ChatTokens:
    """One decode step's pieces of every chat reply decoding: (request id, row, text)."""

    items: list[tuple[str, int, str]]


@dataclass(frozen=True)
class WorkerDied:
    """A worker exited; the job it ran (if any) is reported after all of its earlier events."""

    job: int | None
    exitcode: int | None = None
    runner: str = ""


@dataclass(frozen=True)
class JobEvent:
    """Something a running job reports; `name` is what it is stored and streamed as."""

    job: int
    attempt: int
    name: ClassVar[str]

    def data(self) -> dict[str, Any]:
        """What is stored and streamed of it (without the job and attempt)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("job", "attempt")}


@dataclass(frozen=True)
class Started(JobEvent):
    model: dict[str, Any]  # the model's info
    runner: str = ""  # which worker runs it, in words
    name: ClassVar[str] = "started"


@dataclass(frozen=True)
class Resolved(JobEvent):
    """What the run resolved from its defaults, sent as soon as training starts (and again when one
    is found later, as a calibrated R): its blocks, R and the residual norm at the source."""

    source: int | None = None
    target: int | None = None
    radius: float | None = None
    residual_norm: float | None = None
    name: ClassVar[str] = "resolved"


@dataclass(frozen=True)
class Progress(JobEvent):
    progress: float  # 0..1
    message: str
    points: list[tuple[int, int, float]] = field(default_factory=list)  # (vector, step, objective)
    figures: dict[str, Any] = field(default_factory=dict)  # phase, vectors done, step, ETA …
    name: ClassVar[str] = "progress"


@dataclass(frozen=True)
class Vectors(JobEvent):
    """Finished vectors (rows: index, block, values, norm, objective, kl, metrics[, adapter])."""

    rows: list[dict[str, Any]]
    source: int | None = None
    target: int | None = None
    radius: float | None = None
    residual_norm: float | None = None
    result: dict[str, Any] = field(default_factory=dict)  # merged into the run's result
    name: ClassVar[str] = "vectors"


@dataclass(frozen=True)
class Generations(JobEvent):
    rows: list[dict[str, Any]]  # generation rows, each naming its vector by index or id
    name: ClassVar[str] = "generations"


@dataclass(frozen=True)
class WorkingScales(JobEvent):
    """The gallery's probe: where each vector acts (rows: index, scale, broken_at, fluent, fluency)."""

    rows: list[dict[str, Any]]
    name: ClassVar[str] = "working_scales"


@dataclass(frozen=True)
class Result(JobEvent):
    result: dict[str, Any]  # merged into the run's result
    radius: float | None = None
    name: ClassVar[str] = "result"


@dataclass(frozen=True)
class Findings(JobEvent):
    found: dict[str, Any]  # scores, behaviours, ranks, curve (engine/discovery/findings.py)
    name: ClassVar[str] = "findings"


@dataclass(frozen=True)
class Detections(JobEvent):
    rows: list[dict[str, Any]]  # generation_id, score
    name: ClassVar[str] = "detections"


@dataclass(frozen=True)
class SweepFound(JobEvent):
    found: dict[str, Any]  # a scale sweep's points and completions
    name: ClassVar[str] = "scale_sweep"


@dataclass(frozen=True)
class Finished(JobEvent):
    status: str  # succeeded | failed | cancelled
    error: str = ""
    name: ClassVar[str] = "finished"


FromWorker = Ready | Resident | Reply | Token | ChatTokens | WorkerDied | JobEvent
