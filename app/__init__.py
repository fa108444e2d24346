"""steerscope's web app (FastAPI server, database, worker executor).

It never imports torch, transformers or the engine directly: only the worker side of the
executor loads `engine`, lazily. The import contracts in pyproject.toml and
tests/app/test_boundary.py hold it to that from the first line of code.
"""
