"""steerscope's ML engine: load models, steer them, train MELBO vectors and orthogonal chains.

A plain torch + transformers library: no web, database or app imports (an import contract
checks it). The names below are the public API; everything else is an implementation detail.
"""

from engine.errors import EngineError
from engine.generate import GenerationRequest, GenerationResult, generate, stream
from engine.melbo import MelboResult, VectorRecord, train_melbo
from engine.models import LoadedModel, ModelInfo, get_blocks, load_model
from engine.prompts import encode_prompts, format_prompt, target_mask
from engine.specs import CalibrateSpec, ChainSpec, MelboSpec
from engine.steering import combine, steer

__all__ = [
    "CalibrateSpec",
    "ChainSpec",
    "EngineError",
    "GenerationRequest",
    "GenerationResult",
    "LoadedModel",
    "MelboResult",
    "MelboSpec",
    "ModelInfo",
    "VectorRecord",
    "combine",
    "encode_prompts",
    "format_prompt",
    "generate",
    "get_blocks",
    "load_model",
    "steer",
    "stream",
    "target_mask",
    "train_melbo",
]
