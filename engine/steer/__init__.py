"""Steering a model: hooks on a block's output, a span of blocks run on cached activations, the
MELBO objective, and metrics of a vector's effect."""
