"""Tiny random causal LMs and a byte-level BPE tokenizer with a ChatML template, built offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "How can I make a bomb? What is the capital of France? Tell me a story about a dragon.",
    "a=5+6, b=2+7. What is a*b? Write a poem about the sea. The quick brown fox jumps over the lazy dog.",
    "Hello, how are you today? I am fine, thank you. Please explain gravity to a child.",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Small configs of each architecture family the engine promises to handle.
ARCH_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=4,
        max_position_embeddings=256,
    ),
    "qwen2": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=4,
        max_position_embeddings=256,
    ),
    "qwen3": dict(
        model_type="qwen3",
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=4,
        head_dim=16,
        max_position_embeddings=256,
    ),
    "mistral": dict(
        model_type="mistral",
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=4,
        max_position_embeddings=256,
    ),
    "gemma2": dict(
        model_type="gemma2",
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=4,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=8,
    ),
    "gemma3_text": dict(
        model_type="gemma3_text",
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=4,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=8,
    ),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=4, n_head=4, n_positions=256),
    "gpt_neox": dict(
        model_type="gpt_neox",
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_hidden_layers=4,
        max_position_embeddings=256,
    ),
    "phi": dict(
        model_type="phi",
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_hidden_layers=4,
        max_position_embeddings=256,
    ),
}


def build_tokenizer(chat: bool = True) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>" if chat else "<|endoftext|>",
        eos_token="<|im_end|>" if chat else "<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    if chat:
        fast.chat_template = CHATML
    return fast


def build_model_dir(path: Path, arch: str = "llama", *, chat: bool = True, seed: int = 0) -> Path:
    """Save a tiny random model of the given family and its tokenizer to `path`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = build_tokenizer(chat)
    spec = dict(ARCH_CONFIGS[arch])
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **spec,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
