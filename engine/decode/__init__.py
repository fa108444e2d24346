"""Steered generation: continuous batching, its KV cache, steps that give way to waiting work."""
