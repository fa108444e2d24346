"""Runs: starting them (every kind through launch.py), what each must store, their summary,
gallery and forms, and their API and pages."""
