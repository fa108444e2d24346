"""Refining a stored vector: scale sweeps, R-paths, generalizations and searches, read back and shown."""
