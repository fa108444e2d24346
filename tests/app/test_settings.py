"""Every setting has a default, help text, and a row in the settings table of docs/operations.md."""

from __future__ import annotations

import re

import pytest

from app.settings import ROOT, Settings

SETTINGS_DOC = ROOT / "docs" / "operations.md"
NAME = re.compile(r"`STEERSCOPE_([A-Z_]+)`")


def test_every_setting_is_documented_in_the_operations_doc() -> None:
    documented = set(NAME.findall(SETTINGS_DOC.read_text()))
    names = {name.upper() for name in Settings.model_fields}
    assert names - documented == set(), "settings missing from docs/operations.md"
    assert documented - names == set(), "docs/operations.md documents settings that do not exist"
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no help text"


def test_the_other_pages_name_only_real_settings() -> None:
    names = {name.upper() for name in Settings.model_fields}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {(page.name, name) for page in pages for name in NAME.findall(page.read_text())}
    assert {(page, name) for page, name in named if name not in names} == set()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERSCOPE_PORT", "9001")
    monkeypatch.setenv("STEERSCOPE_DATA_DIR", "/tmp/somewhere")
    settings = Settings()
    assert settings.port == 9001
    assert settings.resolved_database_url() == "sqlite:////tmp/somewhere/steerscope.db"
