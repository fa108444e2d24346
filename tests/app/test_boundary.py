"""The engine/app boundary: checked by import-linter in `make lint` and by importing here."""

from __future__ import annotations

import subprocess
import sys


def test_creating_the_app_loads_no_ml_library() -> None:
    code = (
        "import sys, app.cli; from app.main import create_app; create_app(); "
        "print(sorted(m for m in ('torch', 'transformers', 'engine') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_the_engine_loads_no_web_library() -> None:
    code = (
        "import sys, engine, engine.cli.main; "
        "web = ('fastapi', 'starlette', 'sqlalchemy', 'jinja2', 'app'); "
        "print(sorted(m for m in web if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
