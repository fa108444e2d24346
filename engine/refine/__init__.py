"""Refining a stored vector: scale sweep, R-path, training on more prompts, search."""
