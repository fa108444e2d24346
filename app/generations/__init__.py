"""Generations on request: one steered completion beside its unsteered partner, streamed."""
