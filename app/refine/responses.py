"""What the API answers about refining a vector: a scale sweep, an R-path, a generalization and a
search around it (app/refine/scale_sweep.py, app/refine/refinements.py). Typed like every response
(app/responses.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.responses import GenerationOut, JobStatus


class ScalePointOut(BaseModel):
    scale: float = Field(description="Multiple of the vector: it steers with norm scale × the vector's norm.")
    effect: float = Field(description="Mean cosine distance in meaning from the unsteered completions.")
    fluency: float = Field(description="Mean log-probability per token under the unsteered model.")
    repetition: float = Field(description="Mean share of token 3-grams that repeat.")
    kl: float = Field(
        description="Next-token KL from the unsteered model at the prompt end, mean over prompts."
    )
    flags: dict[str, int] = Field(
        description="Prompts whose completion carries each flag: unchanged, rephrase, gibberish, or "
        "changed (none of them)."
    )
    changed: bool = Field(description="Most prompts' completions are not flagged unchanged.")
    broken: bool = Field(description="Most prompts' completions are flagged gibberish.")


class ScaleSweepOut(BaseModel):
    run_id: int
    vector_id: int = Field(description="The vector swept (the run's parent).")
    status: JobStatus
    block: int
    norm: float = Field(description="The vector's norm.")
    prompts: list[str]
    scales: list[float]
    max_new_tokens: int
    points: list[ScalePointOut] = Field(description="One per scale once the sweep is done; empty before.")
    first_change: float | None = Field(
        description="The smallest |scale| at which most completions change; None if none did."
    )
    breaks: float | None = Field(
        description="The smallest |scale| at which most completions are gibberish; None if none were."
    )
    completions: list[GenerationOut] = Field(description="The vector's greedy completions, prompt by prompt.")
    unsteered: list[GenerationOut] = Field(description="The unsteered completion of each prompt.")


class PathPointOut(BaseModel):
    id: int | None = Field(description="The stored vector at this point (None until the run stores it).")
    multiple: float = Field(description="× the vector's norm R.")
    radius: float = Field(description="The norm it was trained at.")
    objective: float = Field(description="MELBO objective after training.")
    start_objective: float = Field(description="The objective of the vector itself scaled to this norm.")
    steps: int
    cos_parent: float = Field(description="Cosine with the vector the path starts from.")
    cos_previous: float | None = Field(description="Cosine with the point at the next smaller R.")


class CoordinateOut(BaseModel):
    index: int = Field(description="Coordinate of the unit direction.")
    values: list[float] = Field(description="Its value at each point of the path, in order of R.")
    change: float = Field(description="Last minus first.")
    grows: bool = Field(description="Its magnitude grows along the path.")


class RPathOut(BaseModel):
    run_id: int
    vector_id: int = Field(description="The vector the path starts from (the run's parent).")
    status: JobStatus
    multiples: list[float]
    radius: float | None = Field(description="R the multiples multiply (the vector's norm).")
    points: list[PathPointOut] = Field(description="In order of R once the run has trained; empty before.")
    coordinates: list[CoordinateOut] = Field(description="Fastest changing first.")


class HeldOutTextOut(BaseModel):
    text: str
    n_tokens: int
    finish_reason: str
    effect: float | None = None
    fluency: float | None = None
    repetition: float | None = None
    flag: str | None = None


class HeldOutOut(BaseModel):
    prompt: str
    unsteered: HeldOutTextOut
    before: HeldOutTextOut = Field(description="Under the vector before training on the probes.")
    after: HeldOutTextOut = Field(description="Under the new vector.")


class MeansOut(BaseModel):
    effect: float
    fluency: float
    repetition: float
    flags: dict[str, int]


class GeneralizeOut(BaseModel):
    run_id: int
    vector_id: int = Field(description="The vector before (the run's parent).")
    new_vector_id: int | None = Field(description="The vector after, once stored.")
    status: JobStatus
    prompts: list[str] = Field(description="Trained on: the vector's run's prompts and the probes.")
    held_out_prompts: list[str]
    cos_parent: float | None = Field(description="Cosine of the vector after with the one before.")
    objective: dict[str, float] | None = Field(description="before / after, on the training prompts.")
    held_out_objective: dict[str, float] | None = Field(
        description="before / after, on the held-out prompts."
    )
    means: dict[str, MeansOut] | None = Field(
        description="before / after: mean scores of the held-out completions."
    )
    held_out: list[HeldOutOut]


class GenerationScoreOut(BaseModel):
    generation: int
    tried: int = Field(description="Perturbed vectors tried so far.")
    best: float = Field(description="Best score so far.")
    mean: float = Field(description="Mean score of this generation's candidates.")
    max: float = Field(description="Best score among this generation's candidates.")


class FoundOut(BaseModel):
    id: int | None = Field(description="The stored vector (None until the run stores it).")
    generation: int = Field(description="0: the start vector.")
    score: float = Field(description="The detector's mean score over the prompts.")
    scores: list[float] = Field(description="Per prompt.")
    texts: list[str] = Field(description="Its greedy completion of each prompt.")
    cos_start: float


class SearchOut(BaseModel):
    run_id: int
    vector_id: int = Field(description="The start vector (the run's parent).")
    status: JobStatus
    detector_id: int
    detector: str = Field(description="The detector's name (blank if it was deleted since).")
    pattern: str
    budget: int
    start_score: float | None
    best_score: float | None
    tried: int | None = Field(description="Perturbed vectors scored (the start not counted).")
    generations: list[GenerationScoreOut]
    best: list[FoundOut] = Field(description="Best first: the start and those that beat it.")
