"""Tables. Alembic writes the schema from these (migrations/); the app never calls create_all."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy import text as sql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored naive, always UTC


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class LanguageModel(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(500), unique=True)  # "default", a hub id or a folder
    architecture: Mapped[str] = mapped_column(String(100), server_default="")
    n_blocks: Mapped[int] = mapped_column(Integer, server_default="0")
    width: Mapped[int] = mapped_column(Integer, server_default="0")
    context_length: Mapped[int] = mapped_column(Integer, server_default="0")
    chat_template: Mapped[bool] = mapped_column(Boolean, server_default=sql("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Sweep(Base):
    """A grid of MELBO runs asked for at once: R values × source blocks × prompt sets, each learned
    run beside its random twin at the same R, spread over every worker."""

    __tablename__ = "sweeps"
    id: Mapped[int] = mapped_column(primary_key=True)
    model_name: Mapped[str] = mapped_column(String(500))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the grid's axes and shared settings, as asked
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now, index=True)

    runs: Mapped[list[Run]] = relationship(order_by="Run.id")


class Run(Base):
    """What was asked: the kind of work, every setting, the prompts and the seed."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), index=True)  # melbo | random | dct | adapter | chain | ...
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    model_name: Mapped[str] = mapped_column(String(500))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the engine spec, exactly as validated
    prompts: Mapped[list[Any]] = mapped_column(JSON)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # e.g. the vector ids it samples
    seed: Mapped[int] = mapped_column(Integer, server_default="0")
    status: Mapped[str] = mapped_column(String(20), server_default="queued")  # mirrors its job
    # A chain's θ₀. No foreign key: runs and vectors would then reference each other, a cycle
    # SQLite cannot create in one pass; each chain vector's parent_id carries the constraint.
    parent_vector_id: Mapped[int | None] = mapped_column(Integer, index=True)
    source: Mapped[int | None] = mapped_column(Integer)  # resolved blocks and R, once known
    target: Mapped[int | None] = mapped_column(Integer)
    radius: Mapped[float | None] = mapped_column(Float)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # run-level outcome
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)
    # A random run trained at the same R and prompts as this learned run (its baseline).
    twin_of: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)

    vectors: Mapped[list[Vector]] = relationship(
        back_populates="run", foreign_keys="Vector.run_id", order_by="Vector.index"
    )


class Vector(Base):
    """A steering vector, or a steering adapter browsed as one.

    An adapter (a rank-r LoRA on its block's MLP output projection, engine/methods/adapters.py) is a Vector
    row too, with its factors in the `adapters` table beside it: galleries, compare, labels, notes,
    generations, scores and behaviours all point at vectors, so they work on adapters unchanged.
    Its `values` are its mean change of the block's output over its run's target positions, what
    cosines, maps and nearest-neighbour lists compare; steering always uses the factors.
    """

    __tablename__ = "vectors"
    __table_args__ = (Index("ix_vectors_run_index", "run_id", "index", unique=True),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)  # position in its run (or chain)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("vectors.id", ondelete="SET NULL"), index=True
    )  # a chain's θ₀
    block: Mapped[int] = mapped_column(Integer)  # the block whose output it is added to
    width: Mapped[int] = mapped_column(Integer)
    values: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian
    norm: Mapped[float] = mapped_column(Float)
    objective: Mapped[float | None] = mapped_column(Float, index=True)  # MELBO objective / chain loss
    kl: Mapped[float | None] = mapped_column(Float, index=True)  # next-token KL from unsteered
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    # From the run's scoring: beyond random x fluent (0..1), its place in the interesting-first
    # order (0 = first), and the behaviour most of its completions fall in.
    interest: Mapped[float | None] = mapped_column(Float, index=True)
    rank: Mapped[int | None] = mapped_column(Integer, index=True)
    behaviour_id: Mapped[int | None] = mapped_column(
        ForeignKey("behaviours.id", ondelete="SET NULL"), index=True
    )
    # From the gallery's probe (engine/refine/working_scale.py): the highest rung of its ladder at
    # which it still writes fluently (its gallery shows it there beside x1, and scoring reads it
    # there when that is below x1), and the first rung that broke.
    working_scale: Mapped[float | None] = mapped_column(Float)  # None: not probed (an adapter, an old run)
    broken_at: Mapped[float | None] = mapped_column(Float)  # None: fluent at every scale probed

    run: Mapped[Run] = relationship(back_populates="vectors", foreign_keys=[run_id])
    adapter: Mapped[AdapterFactors | None] = relationship(
        back_populates="vector", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def is_adapter(self) -> bool:
        return self.adapter is not None


class AdapterFactors(Base):
    """The factors of a vector that is a steering adapter: W' = W + scale · R · B · Aᵀ."""

    __tablename__ = "adapters"
    vector_id: Mapped[int] = mapped_column(ForeignKey("vectors.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer)  # r: columns of A and B
    radius: Mapped[float] = mapped_column(Float)  # R
    factors: Mapped[bytes] = mapped_column(LargeBinary)  # A [d_ff, r] then B [d, r], float32 (engine pack)

    vector: Mapped[Vector] = relationship(back_populates="adapter")


class Generation(Base):
    """One completion with everything that produced it; identical requests share one row."""

    __tablename__ = "generations"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # hash of the request: the dedupe key
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    vector_id: Mapped[int | None] = mapped_column(ForeignKey("vectors.id", ondelete="CASCADE"), index=True)
    unsteered_id: Mapped[int | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"))
    scale: Mapped[float] = mapped_column(Float, server_default="0")
    block: Mapped[int | None] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer, server_default="0")
    temperature: Mapped[float] = mapped_column(Float, server_default="0")
    top_p: Mapped[float] = mapped_column(Float, server_default="1")
    max_new_tokens: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    n_tokens: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str] = mapped_column(String(20))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    # Scores (engine/discovery/scores.py); None until the generation is scored.
    effect: Mapped[float | None] = mapped_column(Float)  # embedding distance from the unsteered one
    fluency: Mapped[float | None] = mapped_column(Float)  # mean log-prob under the unsteered model
    repetition: Mapped[float | None] = mapped_column(Float)  # share of repeated token 3-grams
    beyond_random: Mapped[float | None] = mapped_column(Float)  # percentile among the random twin's
    interest: Mapped[float | None] = mapped_column(Float)
    flag: Mapped[str] = mapped_column(String(20), server_default="")  # unchanged | rephrase | gibberish
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 sentence embedding
    # Typed traits it gained or lost against its unsteered answer: [{"trait": "refusal", "now": true}]
    changes: Mapped[list[Any]] = mapped_column(JSON, server_default=sql("'[]'"))
    behaviour_id: Mapped[int | None] = mapped_column(
        ForeignKey("behaviours.id", ondelete="SET NULL"), index=True
    )


class Behaviour(Base):
    """A group of a run's steered completions that do the same thing (its random twin's included)."""

    __tablename__ = "behaviours"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)  # biggest first; fixed groups last
    kind: Mapped[str] = mapped_column(String(20), server_default="cluster")  # cluster | unchanged | rephrase
    name: Mapped[str] = mapped_column(String(200))
    words: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # The member nearest the behaviour's centre. No foreign key: generations point at behaviours,
    # and a cycle of constraints is what SQLite cannot create in one pass.
    exemplar_id: Mapped[int | None] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer, server_default="0")  # completions
    n_vectors: Mapped[int] = mapped_column(Integer, server_default="0")  # learned vectors
    n_random: Mapped[int] = mapped_column(Integer, server_default="0")  # random-twin vectors
    subtitle: Mapped[str] = mapped_column(String(300), server_default="")  # its words, "a · b · c"
    trait: Mapped[str] = mapped_column(String(100), server_default="")  # the shared trait naming it, if any
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Detector(Base):
    """A question asked of every completion: a regular expression or a judge model's yes/no."""

    __tablename__ = "detectors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # regex | judge
    pattern: Mapped[str] = mapped_column(Text)  # the expression, or the question
    judge_model: Mapped[str] = mapped_column(String(500), server_default="")  # "" = the run's model
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class DetectorScore(Base):
    __tablename__ = "detector_scores"
    __table_args__ = (Index("ix_detector_scores_rank", "detector_id", "score"),)
    detector_id: Mapped[int] = mapped_column(ForeignKey("detectors.id", ondelete="CASCADE"), primary_key=True)
    generation_id: Mapped[int] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    score: Mapped[float] = mapped_column(Float)  # 1/0 for a regex, P(yes) for a judge


class LabelSet(Base):
    __tablename__ = "label_sets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Label(Base):
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    label_set_id: Mapped[int] = mapped_column(ForeignKey("label_sets.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    colour: Mapped[str] = mapped_column(String(20), server_default="#888888")
    key: Mapped[int | None] = mapped_column(Integer)  # keyboard shortcut 1-9
    description: Mapped[str] = mapped_column(Text, server_default="")


class Labeling(Base):
    """A label put on a vector or on a single generation, by someone, at some time."""

    __tablename__ = "labelings"
    id: Mapped[int] = mapped_column(primary_key=True)
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id", ondelete="CASCADE"), index=True)
    vector_id: Mapped[int | None] = mapped_column(ForeignKey("vectors.id", ondelete="CASCADE"), index=True)
    generation_id: Mapped[int | None] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"), index=True
    )
    author: Mapped[str] = mapped_column(String(100), server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    vector_id: Mapped[int | None] = mapped_column(ForeignKey("vectors.id", ondelete="CASCADE"), index=True)
    generation_id: Mapped[int | None] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"), index=True
    )
    text: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(100), server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200), server_default="")
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    model_name: Mapped[str] = mapped_column(String(500), server_default="")
    # The steering panel as it stands: [{vector_id, scale, enabled}], applied from the next reply on.
    steering: Mapped[list[Any]] = mapped_column(JSON, server_default=sql("'[]'"))
    settings: Mapped[dict[str, Any]] = mapped_column(
        JSON, server_default=sql("'{}'")
    )  # seed, temperature, ...
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=now, index=True)


class Message(Base):
    """A chat turn in one pane, with the exact steering and sampling that produced it."""

    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    pane: Mapped[str] = mapped_column(String(20))  # steered | unsteered
    role: Mapped[str] = mapped_column(String(20))  # user | assistant
    content: Mapped[str] = mapped_column(Text)
    steering: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # vectors, scales, block
    sampling: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # seed, temperature, ...
    turn: Mapped[int] = mapped_column(Integer, server_default="0")  # user message and its replies share it
    n_tokens: Mapped[int] = mapped_column(Integer, server_default="0")
    finish_reason: Mapped[str] = mapped_column(String(20), server_default="")  # "" while it streams
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_queue", "status", "priority", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20), server_default="queued")
    priority: Mapped[int] = mapped_column(Integer, server_default="0")  # higher runs first
    progress: Mapped[float] = mapped_column(Float, server_default="0")  # 0..1
    message: Mapped[str] = mapped_column(Text, server_default="")
    error: Mapped[str] = mapped_column(Text, server_default="")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    owner: Mapped[str] = mapped_column(String(100), server_default="")  # who may run it ("" = any)
    runner: Mapped[str] = mapped_column(String(200), server_default="")  # the worker (and node) running it
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, server_default=sql("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    run: Mapped[Run] = relationship()


class JobEvent(Base):
    """What a job reported, in order; its id is the SSE event id (Last-Event-ID replays from it)."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(20))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
