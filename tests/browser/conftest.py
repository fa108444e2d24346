"""Browser tests: Debian's Chromium driven by Playwright against a live server on the tiny model."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from tests.app.conftest import make_settings
from tests.live import LiveServer, free_port

CHROMIUM = os.environ.get("STEERSCOPE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("STEERSCOPE_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`.ci/run` does)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    port = free_port()
    settings = make_settings(tmp_path_factory.mktemp("browser") / "data", tiny_dir, gallery_tokens=8)
    with LiveServer(create_app(settings), port) as server:
        yield server


@pytest.fixture(scope="session")
def shots() -> Path:
    """Where each page's screenshot goes (a CI artifact)."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS
