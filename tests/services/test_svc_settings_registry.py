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


def test_variables_the_packages_read_are_in_the_registry():
    """A RECTRAIN_* / REDIS_URL / RAY_ADDRESS variable read anywhere in the packages is a
    setting (trainer/ cannot import services/, so it names the variable itself)."""
    import re

    registry = {env_var(m, n) for m in (Settings, ClientSettings) for n in m.model_fields}
    # the launcher's own hand-overs to a job's driver: the spec (Ray Jobs) and the dispatch time
    internal = {"RECTRAIN_SPEC_B64", "RECTRAIN_DISPATCHED_AT"}
    pattern = re.compile(
        r"""(?:environ(?:\.get)?\(?\[?|getenv\(|(?:ENV_[A-Z_]+|[A-Z_]+_ENV) = )["']((?:RECTRAIN_[A-Z0-9_]+)|RAY_ADDRESS|REDIS_URL)["']"""
    )
    repo = README.parent
    read = {
        m.group(1)
        for pkg in ("cli", "api", "services", "trainer", "bench")
        for p in (repo / pkg).rglob("*.py")
        for m in pattern.finditer(p.read_text())
    }
    assert read, "the pattern found nothing: update it"
    assert read - internal <= registry, (
        f"read but not in services/settings.py: {sorted(read - internal - registry)}"
    )
