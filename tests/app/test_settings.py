"""Every setting has a default, help text, and a line in the README."""

from __future__ import annotations

import re

import pytest

from app.settings import ROOT, Settings


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`STEERSCOPE_([A-Z_]+)`", readme))
    names = {name.upper() for name in Settings.model_fields}
    assert names - documented == set(), "settings missing from the README"
    assert documented - names == set(), "the README documents settings that do not exist"
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no help text"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERSCOPE_PORT", "9001")
    monkeypatch.setenv("STEERSCOPE_DATA_DIR", "/tmp/somewhere")
    settings = Settings()
    assert settings.port == 9001
    assert settings.resolved_database_url() == "sqlite:////tmp/somewhere/steerscope.db"
