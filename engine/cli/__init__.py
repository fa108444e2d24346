"""`python -m engine ...`: the engine's commands for scripts and GPU boxes."""
