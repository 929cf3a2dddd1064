"""The settings registry: every variable documented, the README table current, the
runner's environment built from it."""

from __future__ import annotations

from pathlib import Path

from services.launcher import settings_env
from services.settings import (
    SETTINGS_TABLE_BEGIN,
    SETTINGS_TABLE_END,
    ClientSettings,
    Settings,
    env_var,
    settings_table,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_has_a_variable_and_a_line():
    for model in (Settings, ClientSettings):
        for name, f in model.model_fields.items():
            assert env_var(model, name), name
            assert f.description and "\n" not in f.description, (
                f"{model.__name__}.{name}: no one-line description"
            )


def test_readme_settings_table_is_current():
    text = README.read_text()
    block = text.split(SETTINGS_TABLE_BEGIN, 1)[1].split(SETTINGS_TABLE_END, 1)[0].strip()
    assert block == settings_table(), "README's settings table is stale: run `python -m services.settings`"
    for model in (Settings, ClientSettings):
        for name in model.model_fields:
            assert f"| `{env_var(model, name)}` |" in block, f"{env_var(model, name)} missing from README"


def test_runner_environment_carries_every_setting(tmp_path, monkeypatch):
    s = Settings(data_dir=tmp_path, max_passes=7, data_roots=str(tmp_path))
    env = settings_env(s, "redis://example:6379/0")
    assert env["REDIS_URL"] == "redis://example:6379/0"
    assert env["RECTRAIN_MAX_PASSES"] == "7"  # not in the old hand-written list
    assert env["RECTRAIN_DATA_DIR"] == str(tmp_path.resolve())
    for k, v in env.items():  # what the runner's Settings() reads back
        monkeypatch.setenv(k, v)
    back = Settings()
    assert (back.max_passes, back.data_roots, back.redis_url) == (7, str(tmp_path), "redis://example:6379/0")
