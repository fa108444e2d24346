"""What the JSON API answers with: typed models, so `/docs` shows every response's shape and a
route cannot answer with a field it does not declare. Times are UTC, written with a trailing Z."""

from __future__ import annotations

import struct
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from app.kinds import Kind
from app.models import Generation, Job, Run, Vector
from app.runs.scales import LADDER_TEXT

UtcTime = Annotated[datetime, PlainSerializer(lambda d: d.isoformat() + "Z", return_type=str)]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def values_list(data: bytes) -> list[float]:
    """float32 little-endian bytes as numbers."""
    return list(struct.unpack(f"<{len(data) // 4}f", data))


class ModelOut(Out):
    id: int
    name: str = Field(description='"default", a hub id or a folder.')
    architecture: str
    n_blocks: int
    width: int = Field(description="Hidden size: the length of its steering vectors.")
    context_length: int
    chat_template: bool


class JobOut(Out):
    id: int
    kind: Kind = Field(description="The kind of its run.")
    run_id: int
    status: JobStatus
    priority: int
    progress: float = Field(description="0 to 1.")
    message: str
    error: str
    attempts: int
    cancel_requested: bool
    runner: str = Field(description="The worker that runs it, or ran it last (blank until one starts).")
    created_at: UtcTime
    started_at: UtcTime | None
    finished_at: UtcTime | None
    heartbeat_at: UtcTime | None


class RunOut(Out):
    id: int
    kind: Kind
    model_id: int | None
    model_name: str
    spec: dict[str, Any] = Field(description="The engine spec exactly as validated.")
    prompts: list[str]
    seed: int
    status: JobStatus
    parent_vector_id: int | None = Field(
        description="A chain's θ₀; the vector a scale sweep, R-path, generalization or search refines."
    )
    source: int | None = Field(description="Resolved source block, once known.")
    target: int | None = Field(description="Resolved target block, once known.")
    radius: float | None = Field(description="Resolved R, once known.")
    result: dict[str, Any]
    inputs: dict[str, Any]
    created_at: UtcTime
    finished_at: UtcTime | None


class AdapterOut(Out):
    rank: int = Field(description="r: columns of the factors A and B.")
    radius: float = Field(description="R in W + R·B·Aᵀ on the block's MLP output projection.")


class VectorOut(Out):
    id: int
    run_id: int
    index: int = Field(description="Position in its run or chain.")
    parent_id: int | None
    block: int = Field(description="The block whose output it is added to.")
    width: int
    norm: float
    objective: float | None
    kl: float | None = Field(description="Next-token KL from the unsteered model.")
    metrics: dict[str, Any]
    interest: float | None = Field(description="Beyond random × fluent, 0 to 1 (None until scored).")
    rank: int | None = Field(description="Place in the run's interesting-first order (0 first).")
    behaviour_id: int | None = Field(description="The behaviour most of its completions fall in.")
    working_scale: float | None = Field(
        description=f"The highest of {LADDER_TEXT} (× the vector) at which it "
        "still writes fluently: its gallery shows it there beside ×1, and scoring reads it there when "
        "that is below ×1 (None: not probed)."
    )
    broken_at: float | None = Field(
        description="The first scale of that ladder at which it broke (None: none)."
    )
    values: list[float] | None = Field(
        None,
        description="The float32 values (only with ?values=true); an adapter's are its mean change of the "
        "block's output on its run's prompts.",
    )
    adapter: AdapterOut | None = Field(
        description="Set when it is a steering adapter (it steers with its factors, not its values)."
    )


class GenerationOut(Out):
    id: int
    model_id: int
    vector_id: int | None = Field(description="None: the unsteered model.")
    unsteered_id: int | None = Field(description="The unsteered generation it sits beside.")
    scale: float
    block: int | None
    prompt: str
    seed: int
    temperature: float
    top_p: float
    max_new_tokens: int
    text: str
    n_tokens: int
    finish_reason: str
    effect: float | None = Field(description="Cosine distance in meaning from the unsteered completion.")
    fluency: float | None = Field(description="Mean log-probability per token under the unsteered model.")
    repetition: float | None = Field(description="Share of its token 3-grams that repeat.")
    beyond_random: float | None = Field(description="Percentile of its effect among the random twin's.")
    interest: float | None
    flag: str = Field(description="unchanged | rephrase | gibberish, or empty.")
    changes: list[dict[str, Any]] = Field(
        description='Typed traits it gained or lost against its unsteered answer: [{"trait": "refusal", '
        '"now": true}] (refusal, identity, disclaimer, list, code, language, instructions, number, short).'
    )
    behaviour_id: int | None


# What a generation is, in the API and in exports.
GENERATION_FIELDS = tuple(GenerationOut.model_fields)


class Created(BaseModel):
    job: JobOut
    run_id: int


class ComposedOut(BaseModel):
    run_id: int = Field(description="The composition's run: one vector, stored at once.")
    vector_id: int = Field(description="The composed vector: the mean of the chain's first n × √n.")
    job: JobOut = Field(description="The job sampling it on the chain's prompts.")


class GeneratedPair(BaseModel):
    generation: GenerationOut | None = Field(description="The steered completion (None without a vector).")
    unsteered: GenerationOut


class Imported(BaseModel):
    run_id: int
    vector_ids: list[int]
    sample_jobs: list[int] = Field(description="The jobs generating the imported vectors' samples.")


def job_out(job: Job) -> dict[str, Any]:
    return JobOut.model_validate(job).model_dump(mode="json")


def run_out(run: Run) -> dict[str, Any]:
    return RunOut.model_validate(run).model_dump(mode="json")


def vector(row: Vector, *, values: bool = False) -> VectorOut:
    """A vector's answer; its values (bytes in the table) only when asked, else left unset."""
    data = {name: getattr(row, name) for name in VectorOut.model_fields if name != "values"}
    if values:
        data["values"] = values_list(row.values)
    return VectorOut.model_validate(data)


def vector_out(row: Vector, *, values: bool = False) -> dict[str, Any]:
    return vector(row, values=values).model_dump(mode="json", exclude_unset=True)


def generation_out(generation: Generation) -> dict[str, Any]:
    return GenerationOut.model_validate(generation).model_dump(mode="json")


class ConversationItem(BaseModel):
    id: int
    title: str
    model: str
    updated_at: UtcTime


class MessageOut(BaseModel):
    id: int
    pane: Literal["steered", "unsteered"]
    role: Literal["user", "assistant"]
    content: str
    turn: int = Field(description="A user message and its replies share it.")
    steering: dict[str, Any] = Field(
        description="The block and the (vector, scale) terms it was steered by, and the adapter "
        "{vector_id, scale, block} if one steered it too."
    )
    sampling: dict[str, Any]
    n_tokens: int
    finish_reason: str = Field(description='"" while it streams.')
    created_at: str
    superseded: bool = Field(description="An earlier reply of a turn that was answered again.")


class ConversationOut(BaseModel):
    id: int
    title: str
    model: str
    steering: list[dict[str, Any]] = Field(
        description="The panel: [{vector_id, scale, enabled, block, norm, adapter}] (at most one "
        "adapter switched on)."
    )
    settings: dict[str, Any]
    created_at: str
    updated_at: str
    messages: list[MessageOut]


class Turn(BaseModel):
    turn: int


class Stopped(BaseModel):
    stopped: bool = Field(description="False: no reply was in progress.")


class LabelOut(Out):
    id: int
    name: str
    colour: str
    key: int | None = Field(description="Keyboard shortcut 1-9 in the labeling queue.")
    description: str


class LabelingOut(BaseModel):
    label_id: int
    vector_id: int | None
    generation_id: int | None
    on: bool


class NoteOut(Out):
    id: int
    vector_id: int | None
    text: str
    author: str


class SweepSide(BaseModel):
    """One half of a sweep cell (learned or random); empty until its run exists."""

    run_id: int | None = None
    status: str | None = None
    runner: str | None = Field(None, description="The worker that trains it.")
    radius: float | None = None
    source: int | None = None
    vectors: int | None = None
    objective: float | None = Field(None, description="Mean over the run's vectors.")
    kl: float | None = Field(None, description="Mean next-token KL over the run's vectors.")
    sample: str | None = Field(None, description="The first vector's completion of the first prompt.")
    unsteered_id: int | None = None


class SweepCell(BaseModel):
    source: int | None
    learned: SweepSide
    random: SweepSide
    kl_ratio: float | None = Field(description="Learned KL over random KL at the same R.")
    unsteered: str | None = Field(description="The unsteered completion both sides are read against.")


class SweepRow(BaseModel):
    radius: float
    cells: list[SweepCell]


class SweepTable(BaseModel):
    index: int
    prompts: list[str]
    rows: list[SweepRow] = Field(description="One per R value; cells one per source block.")


class SweepOut(BaseModel):
    id: int
    model: str
    spec: dict[str, Any]
    sources: list[int | None]
    tables: list[SweepTable] = Field(description="One per prompt set.")
    finished: bool


class SweepSummary(BaseModel):
    id: int
    model: str
    spec: dict[str, Any]
    created_at: UtcTime


class Exemplar(BaseModel):
    generation_id: int
    vector_id: int | None
    prompt: str
    text: str


class BehaviourOut(BaseModel):
    id: int
    run_id: int
    index: int
    kind: str = Field(description="cluster, or the unchanged / rephrase groups.")
    name: str = Field(description="What it does: the trait its completions share, else its words.")
    subtitle: str = Field(description="Its most distinctive words, 'a · b · c'.")
    trait: str = Field(description="The shared trait that named it ('' when none did).")
    words: list[str]
    size: int = Field(description="Completions in it, the random twin's included.")
    n_vectors: int
    n_random: int = Field(description="Random-twin vectors with a completion in it.")
    exemplar: Exemplar | None = Field(description="The member nearest its centre.")


class DiscoveryOut(BaseModel):
    run_id: int
    learned: list[int] = Field(description="Distinct behaviours shown by the first k learned vectors.")
    random: list[int] = Field(description="The same for the random twin's vectors.")


class ScoringQueued(BaseModel):
    job: JobOut
    run_id: int
    scoring_run_id: int = Field(description="The `score` run that carries the job.")


class BehaviourLabelled(BaseModel):
    behaviour_id: int
    label_id: int
    vectors: int
    generations: int


class DetectorOut(Out):
    id: int
    name: str
    kind: str = Field(description="regex | judge")
    pattern: str = Field(description="The regular expression, or the judge's yes/no question.")
    judge_model: str


class DetectorRun(BaseModel):
    detector_id: int
    run_id: int
    scored: int | None = Field(description="Completions scored (a regex, at once); None for a judge.")
    job: JobOut | None = Field(description="The judge's job (a `detect` run); None for a regex.")


class ConceptScoreOut(BaseModel):
    prompt: str
    score: float = Field(description="The prompt's largest user-turn projection on the concept.")
    present: bool = Field(description="Above the concept's threshold.")


class DetectedOut(BaseModel):
    threshold: float
    scores: list[ConceptScoreOut]
