"""steerscope's ML engine: load models, steer them, train MELBO vectors and orthogonal chains.

A plain torch + transformers library: no web, database or app imports (an import contract
checks it). The names below are the public API; everything else is an implementation detail.
"""

from engine.decode.decoder import Decoder, Step
from engine.decode.generate import GenerationRequest, GenerationResult, generate, stream
from engine.discovery.bank import bank_prompts
from engine.discovery.behaviours import Behaviour, Member, cluster
from engine.discovery.corpus import Corpus, Part, corpus_steps
from engine.discovery.dashboard import DashboardSpec, dashboard, dashboard_steps
from engine.discovery.detectors import Detector, detect, judge
from engine.discovery.embedder import Embedder
from engine.discovery.findings import Completion, Findings, find
from engine.discovery.scores import ScoreInput, Scores, score
from engine.discovery.tokens import direct_read, effect_logprobs
from engine.errors import EngineError
from engine.methods.calibrate import CalibrationResult, calibrate, sweep_radius
from engine.methods.concepts import Concept, ConceptSpec, concept_scores, concept_steps, train_concept
from engine.methods.default_radius import DefaultShare, default_share
from engine.methods.melbo import MelboResult, VectorRecord, train_melbo
from engine.models import LoadedModel, ModelInfo, get_blocks, load_model
from engine.prompts import encode_prompts, format_prompt, target_mask
from engine.refine.scale_sweep import ScaleSweep, scale_sweep
from engine.refine.working_scale import WorkingScale, working_scales
from engine.specs import CalibrateSpec, ChainSpec, MelboSpec, ScaleSweepSpec
from engine.steer.metrics import cosine_matrix, downstream_cosine_matrix, downstream_norms, next_token_kl
from engine.steer.steering import combine, steer
from engine.vectors import VectorFile, export_gguf, import_gguf, load_any, load_vectors, save_vectors

__all__ = [
    "Behaviour",
    "CalibrateSpec",
    "CalibrationResult",
    "ChainSpec",
    "Completion",
    "Concept",
    "ConceptSpec",
    "Corpus",
    "DashboardSpec",
    "Decoder",
    "DefaultShare",
    "Detector",
    "Embedder",
    "EngineError",
    "Findings",
    "GenerationRequest",
    "GenerationResult",
    "LoadedModel",
    "MelboResult",
    "MelboSpec",
    "Member",
    "ModelInfo",
    "Part",
    "ScaleSweep",
    "ScaleSweepSpec",
    "ScoreInput",
    "Scores",
    "Step",
    "VectorFile",
    "VectorRecord",
    "WorkingScale",
    "bank_prompts",
    "calibrate",
    "cluster",
    "combine",
    "concept_scores",
    "concept_steps",
    "corpus_steps",
    "cosine_matrix",
    "dashboard",
    "dashboard_steps",
    "default_share",
    "detect",
    "direct_read",
    "downstream_cosine_matrix",
    "downstream_norms",
    "effect_logprobs",
    "encode_prompts",
    "export_gguf",
    "find",
    "format_prompt",
    "generate",
    "get_blocks",
    "import_gguf",
    "judge",
    "load_any",
    "load_model",
    "load_vectors",
    "next_token_kl",
    "save_vectors",
    "scale_sweep",
    "score",
    "steer",
    "stream",
    "sweep_radius",
    "target_mask",
    "train_concept",
    "train_melbo",
    "working_scales",
]
