"""Vectors: their page, comparing them, their geometry, files in and out."""
