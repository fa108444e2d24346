"""Concepts: directions made from prompts with and without a concept (a run kind of their own,
app/kinds.py), the page that makes them, and a concept used as a detector."""
