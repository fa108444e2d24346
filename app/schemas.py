"""Request bodies of the JSON API (their fields and defaults are the engine's specs; a test keeps
them in step). The shapes it answers with are in app/responses.py.

Types are checked here; ranges that depend on the model (blocks, prompt length) are checked by a
worker against the loaded model, with the engine's own messages.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Len
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, StringConstraints

from app.errors import Invalid
from app.fields import ModelName, Name, Prompts, Text, Whole
from app.kinds import Kind


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def spec(self, *, exclude: set[str] | None = None) -> dict[str, Any]:
        """The fields the engine spec takes, leaving out unset ones so the engine's defaults apply."""
        return self.model_dump(exclude_none=True, exclude={"priority", *(exclude or set())})


# The fields only MELBO's objective and optimizer read; another method refuses a value other than
# their default instead of ignoring it.
MELBO_ONLY = ("radius_fraction", "p", "q", "lr", "loss", "normalize", "orthogonal", "mode")
ADAPTER_REFUSES = ("radius_fraction", "orthogonal", "mode")  # an adapter has no norm or ortho option


MELBO_POSITIONS = "last:3"  # MELBO's default positions (engine/prompts.py); a test keeps the two equal


class MelboCreate(Body):
    prompts: Prompts = Field(description="Prompts to train on; each is formatted with the chat template.")
    model: ModelName | None = Field(
        None, description="Model name, hub id or folder; default: the server's default."
    )
    method: Literal[Kind.MELBO, Kind.RANDOM, Kind.DCT, Kind.ADAPTER] = Field(
        Kind.MELBO,
        description="melbo trains; random keeps random vectors of the same norm (the baseline); dct "
        "(Deep Causal Transcoding) learns all vectors together in a few iterations and ranks them by α; "
        "adapter trains steering adapters (rank-r LoRAs on the source block's MLP output projection).",
    )
    source: Whole | None = Field(
        None, description="Block whose output is steered; default from depth (7 on deep models)."
    )
    target: Whole | None = Field(None, description="Block the objective reads; default L - 8.")
    radius: float | None = Field(
        None,
        description="R, the norm of every vector; default 0.7 × the share of the "
        "residual norm at the source calibrated once per model, blocks and positions (the same for a run "
        "and its random twin) "
        "(dct: calibrated, where the response to random vectors stops being linear; adapter: the R in "
        "W + R·B·Aᵀ, by default the one that moves the residual as far as a default-norm vector).",
    )
    radius_fraction: float | None = Field(
        None,
        description="R as a share of the residual norm at the source, when R is not given (MELBO only).",
    )
    p: float = Field(2.0, description="Exponent on per-position change norms (MELBO only).")
    q: float | None = Field(None, description="Outer root of the objective; default p (MELBO only).")
    n_vectors: Whole = Field(
        8, description="Number of vectors (dct: factors, at most the model's width; adapter: adapters)."
    )
    steps: Whole | None = Field(
        None,
        description="Optimizer steps per vector; default 100 in fast mode (a batch stops early once it "
        "converged), 300 in reference mode (the published count); dct: iterations, default 10.",
    )
    lr: float | None = Field(None, description="Learning rate; default matched to R (MELBO only).")
    positions: Name | None = Field(
        None,
        description="Positions the objective reads: user | prompt | all | last:k; default "
        f"{MELBO_POSITIONS} for MELBO and its random twin (the reply's opening), user for DCT and adapters.",
    )
    loss: Literal["token", "reference"] = Field(
        "token",
        description="Where the p-norm is taken: per token, or as the published code does (MELBO only).",
    )
    normalize: bool = Field(
        False, description="Divide each position's change by its unsteered norm (MELBO only)."
    )
    orthogonal: bool = Field(
        True, description="Keep every vector orthogonal to the ones before it (MELBO only)."
    )
    mode: Literal["fast", "reference"] = Field(
        "fast", description="fast: cached prefix, batched, early stop; reference: as published (MELBO only)."
    )
    seed: Whole = Field(0, description="Seed of the random starts; same seed, same vectors.")
    batch_size: Whole = Field(
        16, description="Vectors trained together in fast mode (dct: factors per pass)."
    )
    beta: float | None = Field(
        None,
        description="Share of each DCT update taken; default 1, the published infinite step (dct only).",
    )
    rank: Whole | None = Field(
        None,
        description="Rank r of each steering adapter: columns of its factors A and B; default 16 "
        "(adapter only).",
    )
    twin: bool = Field(
        False,
        description="Also train a random twin: random vectors (adapter runs: random adapters of the same "
        "rank) at the same R and prompts, the baseline that scores compare against (not for dct).",
    )
    priority: Whole = Field(0, description="Higher runs first.")

    def spec(self, *, exclude: set[str] | None = None) -> dict[str, Any]:
        return super().spec(exclude={"twin", *(exclude or set())})

    def engine_spec(self) -> dict[str, Any]:
        """The spec of the engine method this body asks for; a field of another method set to
        anything but its default is refused, never ignored."""
        if self.beta is not None and self.method != Kind.DCT:
            raise Invalid("beta applies to dct only")
        if self.rank is not None and self.method != Kind.ADAPTER:
            raise Invalid("rank applies to adapter runs only")
        if self.method in (Kind.MELBO, Kind.RANDOM):
            return self.spec()
        spec = self.spec(exclude={"method"})
        if self.twin and self.method == Kind.DCT:
            raise Invalid(
                "twin applies to MELBO only: a dct run calibrates its own R, so no twin can share it"
            )
        fields = type(self).model_fields
        # An adapter reads MELBO's objective (p, q, loss, normalize) and lr; not its vector options.
        others = ADAPTER_REFUSES if self.method == Kind.ADAPTER else MELBO_ONLY
        for name in others:
            if getattr(self, name) != fields[name].default:
                what = "an adapter run" if self.method == Kind.ADAPTER else "a dct run"
                raise Invalid(f"{name} applies to MELBO only; {what} does not read it")
            spec.pop(name, None)
        return spec


class ChainCreate(Body):
    vector_id: Whole = Field(description="θ₀: the stored vector the chain starts from.")
    prompts: Prompts | None = Field(None, description="Default: the prompts of θ₀'s run.")
    target: Whole | None = Field(None, description="Block the loss reads; default L - 8.")
    n_vectors: Whole = Field(8, description="Length of the chain.")
    steps: Whole | None = Field(None, description="Optimizer steps per vector; fast mode stops early.")
    lr: float | None = Field(None, description="Learning rate; default matched to |θ₀|.")
    loss_threshold: float | None = Field(None, description="Fast mode: stop a vector below this loss.")
    mode: Literal["fast", "reference"] = Field(
        "fast", description="fast: cached segment, batched, early stop; reference: as published."
    )
    batch_size: Whole = Field(4, description="Chain vectors optimized together in fast mode.")
    seed: Whole = Field(0, description="Seed of the random starts.")
    priority: Whole = Field(0, description="Higher runs first.")


class CalibrationCreate(Body):
    prompts: Prompts = Field(description="Prompts the response is measured on.")
    model: ModelName | None = Field(None, description="Default: the server's default model.")
    source: Whole | None = Field(None, description="Block whose output is perturbed; default from depth.")
    target: Whole | None = Field(None, description="Block whose response is measured; default L - 8.")
    positions: Name = Field("user", description="Positions read: user | prompt | all | last:k.")
    directions: Whole = Field(30, description="Random unit directions averaged over.")
    threshold: float = Field(0.5, description="Nonlinearity ratio that defines the calibrated R.")
    seed: Whole = Field(0, description="Seed of the random directions.")
    priority: Whole = Field(0, description="Higher runs first.")


class CompositionCreate(Body):
    chain_run: Whole = Field(description="The chain run whose first n vectors are composed.")
    n: Whole = Field(description="How many of the chain's first vectors: their mean times √n.")


class SamplesCreate(Body):
    vector_ids: list[Whole] = Field(description="Stored vectors of one model (1 to 64).")
    prompts: Prompts = Field(description="Prompts each vector completes.")
    scales: list[float] = Field([1.0], description="Multiples of each vector to steer with.")
    seed: Whole = Field(0, description="Sampling seed; same seed, same text.")
    temperature: float = Field(0.0, description="0: greedy.")
    top_p: float = Field(1.0, description="Nucleus sampling mass.")
    max_new_tokens: Whole = Field(48, description="New tokens per completion.")
    unsteered: bool = Field(True, description="Also the unsteered completion of each prompt.")
    priority: Whole = Field(0, description="Higher runs first.")


MAX_SCALES = 32  # the engine's limit (engine/specs.py); a test keeps the two equal
DEFAULT_SCALES = [i / 4 for i in range(13)]  # 0, 0.25, ..., 3


class ScaleSweepCreate(Body):
    prompts: Prompts | None = Field(None, description="Default: the prompts of the vector's run.")
    scales: Annotated[list[FiniteFloat], Len(1, MAX_SCALES)] = Field(
        DEFAULT_SCALES, description="Multiples of the vector to steer with (sorted, each once)."
    )
    max_new_tokens: Whole | None = Field(
        None, description="New tokens per completion; default: the gallery's (its scale-1 samples)."
    )
    priority: Whole = Field(0, description="Higher runs first.")


MAX_CONCEPT_PROMPTS = 512  # per set: the engine's limit (engine/methods/concepts.py)
ConceptPrompts = Annotated[list[Text], Len(2, MAX_CONCEPT_PROMPTS)]


class ConceptCreate(Body):
    positive: ConceptPrompts = Field(description="Prompts with the concept (at least 2).")
    negative: ConceptPrompts = Field(
        description="Prompts without it (at least 2; for pca as many as with it, paired by index)."
    )
    model: ModelName | None = Field(None, description="Model name; default: the server's default.")
    block: Whole | None = Field(
        None, description="Block whose output is read and steered; default from depth."
    )
    method: Literal["diffmean", "caa", "pca"] = Field(
        "diffmean",
        description="diffmean: the difference of the two sets' mean user-turn activations; caa: the same "
        "at the last prompt position; pca: the first principal direction of the paired differences.",
    )
    norm: Literal["raw", "radius"] = Field(
        "raw", description="raw: the difference's own norm; radius: rescaled to MELBO's default R there."
    )
    name: Annotated[str, StringConstraints(max_length=200)] = Field("", description="What to call it.")
    priority: Whole = Field(0, description="Higher runs first.")


class DashboardCreate(Body):
    rank_by: Literal["max", "mean"] = Field(
        "max", description="Rank the nearest prompts by their best token or their mean over tokens."
    )
    priority: Whole = Field(0, description="Higher runs first.")


# The engine's limits and defaults for refining a vector (engine/refine/specs.py); a test keeps them equal.
MAX_MULTIPLES = 16
MAX_MULTIPLE = 100.0
DEFAULT_MULTIPLES = [0.5, 0.75, 1.0, 1.5, 2.0]
MAX_SEARCH_BUDGET = 512
MAX_POPULATION = 64


class RPathCreate(Body):
    multiples: Annotated[
        list[Annotated[FiniteFloat, Field(gt=0, le=MAX_MULTIPLE)]], Len(1, MAX_MULTIPLES)
    ] = Field(DEFAULT_MULTIPLES, description="Multiples of the vector's norm R to train it again at.")
    prompts: Prompts | None = Field(None, description="Default: the prompts of the vector's run.")
    steps: Whole | None = Field(
        None, description="Optimizer steps at each R; default as fast MELBO (it stops once converged)."
    )
    priority: Whole = Field(0, description="Higher runs first.")


class GeneralizeCreate(Body):
    probes: Prompts = Field(
        description="More prompts to train on (beside the vector's own run's prompts), one per line."
    )
    held_out: Prompts = Field(description="Prompts it is compared on before and after, not trained on.")
    steps: Whole | None = Field(
        None, description="Optimizer steps; default as fast MELBO (it stops once converged)."
    )
    max_new_tokens: Whole | None = Field(
        None, description="New tokens per held-out completion; default: the gallery's."
    )
    priority: Whole = Field(0, description="Higher runs first.")


class SearchCreate(Body):
    detector_id: Whole = Field(
        description="The detector whose score it raises: a regex, or a judge asked of the vector's model."
    )
    prompts: Prompts | None = Field(None, description="Default: the prompts of the vector's run.")
    budget: Whole = Field(
        32,
        ge=1,
        le=MAX_SEARCH_BUDGET,
        description="Perturbed vectors tried in all (each completes every prompt).",
    )
    population: Whole = Field(
        8, ge=1, le=MAX_POPULATION, description="Perturbed vectors tried per generation."
    )
    sigma: FiniteFloat = Field(
        0.3, gt=0, le=10, description="Size of a perturbation, as a share of the vector's norm."
    )
    keep: Whole = Field(
        3, ge=1, le=16, description="Best vectors stored (the start too, until that many beat it)."
    )
    seed: Whole = Field(0, description="Seed of the perturbations.")
    priority: Whole = Field(0, description="Higher runs first.")


class SweepCreate(Body):
    prompt_sets: list[Prompts] = Field(description="Prompt sets, each trained on as one run's prompts.")
    radii: list[float] = Field(
        description="R values; shares of the residual norm at the source when `relative`."
    )
    relative: bool = Field(
        True, description="Read `radii` as shares of the residual norm at the source block."
    )
    sources: list[Whole] | None = Field(None, description="Source blocks; default: the one from depth.")
    model: ModelName | None = Field(
        None, description="Model name, hub id or folder; default: the server's default."
    )
    n_vectors: Whole = Field(8, description="Vectors per run (learned, and as many random).")
    steps: Whole | None = Field(None, description="Optimizer steps per vector; default as for a run.")
    seed: Whole = Field(0, description="Seed of the random starts, shared by every cell and its twin.")
    priority: Whole = Field(0, description="Higher runs first.")


class GenerationCreate(Body):
    prompt: Text
    vector_id: Whole | None = Field(None, description="None: the unsteered model only.")
    scale: float = 1.0
    model: ModelName | None = Field(None, description="Only without a vector (a vector knows its model).")
    seed: Whole = 0
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: Whole = 64
    stream: bool = Field(False, description="Answer as an SSE stream of tokens, then the stored rows.")
