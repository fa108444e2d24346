"""Settings: every knob has a default and help text, and can be set as STEERSCOPE_<NAME>."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent  # the checkout: templates/, static/, migrations/


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEERSCOPE_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where the database and converted models live.")
    database_url: str = Field(
        "", description="SQLAlchemy URL of the database; empty means sqlite:///<data_dir>/steerscope.db."
    )
    host: str = Field("127.0.0.1", description="Address `steerscope serve` binds to.")
    port: int = Field(8000, description="Port `steerscope serve` listens on.")
    allowed_hosts: str = Field(
        "",
        description="Host names the server answers to besides the loopback names and the address it "
        "binds (comma-separated); `*` answers to any name (sensible only with a token).",
    )
    token: str = Field(
        "",
        description="Access token; required when the server binds to anything but the loopback "
        "address. Clients send it as `Authorization: Bearer <token>` or `?token=`.",
    )
    default_model: str = Field(
        "default", description="Model used when a request names none: `default` is the embedded model."
    )
    device: str = Field("auto", description="Torch device for the worker: auto, cpu, cuda, cuda:1, mps.")
    dtype: str = Field("auto", description="Weights dtype for the worker: auto, float32, bfloat16, float16.")
    worker_threads: int = Field(0, description="Torch threads in the worker; 0 lets torch decide.")
    executor: Literal["local", "ray"] = Field(
        "local",
        description="Where the model runs: `local` (one worker process) or `ray` (an actor per device).",
    )
    ray_address: str = Field(
        "local",
        description="With the Ray executor: `local` starts a private cluster on this machine, `auto` joins "
        "the one running here, `host:port` joins a cluster's head.",
    )
    ray_actors: int = Field(
        0, ge=0, description="Ray actors to start; 0 means one per GPU in the cluster, or one per CPU share."
    )
    ray_cpus_per_actor: float = Field(
        1.0, gt=0, description="CPUs each Ray actor reserves (its share of a machine without GPUs)."
    )
    train_share: float = Field(
        0.5,
        ge=0.05,
        le=1.0,
        description="Least share of the worker's time a running job gets while chat replies or other "
        "interactive generations also want it.",
    )
    prefix_cache_mb: float = Field(
        256.0,
        ge=0,
        description="Memory (MiB, per model) for the prompt prefixes the worker keeps between chat turns "
        "and conversations (the chat template's system prompt, each conversation's history), so they "
        "are not prefilled again; least recently used first out. 0 keeps none.",
    )
    gallery_tokens: int = Field(
        48, ge=1, le=2048, description="New tokens per gallery sample generated after each run."
    )
    gallery_batch: int = Field(16, ge=1, le=256, description="Gallery samples decoded together.")
    corpus_bank: int = Field(
        1280,
        ge=0,
        le=1280,
        description="Prompts of the generic prompt bank in each model's corpus (a vector's dashboard "
        "reads it); 0 leaves the bank out.",
    )
    corpus_tokens: int = Field(
        64, ge=0, le=256, description="Greedy tokens answered per corpus prompt; 0 stores prompts only."
    )
    auto_score: bool = Field(
        True,
        description="Score, cluster and rank each MELBO run and chain by itself once its gallery (and its "
        "random twin's) is done; off: only on request.",
    )
    max_vectors: int = Field(256, ge=1, le=1024, description="Most vectors one run or chain may ask for.")
    max_steps: int = Field(5000, ge=1, le=20000, description="Most optimizer steps per vector.")
    max_new_tokens: int = Field(512, ge=1, le=2048, description="Most new tokens one generation may ask for.")
    max_upload_bytes: int = Field(
        64 * 2**20, ge=1, description="Largest vector file an import accepts (safetensors or GGUF)."
    )
    chat_grace_s: float = Field(
        3.0,
        gt=0,
        description="A chat reply whose last watching page went away is stopped after this many seconds "
        "(a reload comes back sooner and picks the reply up).",
    )
    max_attempts: int = Field(
        3, ge=1, description="Times a job is started before a worker that keeps dying fails it."
    )
    heartbeat_s: float = Field(
        2.0, gt=0, description="Seconds between the dispatcher's checks on the worker and its jobs."
    )
    lease_s: float = Field(
        30.0,
        gt=0,
        description="A running job whose heartbeat is older than this is taken to be interrupted "
        "and queued again.",
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="How long an API call waits on the worker (validation, one generation)."
    )

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'steerscope.db'}"
