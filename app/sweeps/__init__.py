"""Sweeps: grids of runs over R, blocks and prompt sets, each beside its random twin."""
