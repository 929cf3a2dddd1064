"""Settings: token parsing, defaults, and what production refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.settings import DEV_TOKEN, Settings, parse_tokens

GOOD = "Xq3vL9pT2mN8rK4wZ7yB1cD6fH0jA5sE"


def test_parse_tokens():
    assert parse_tokens("a1:alice, b2:bob,,") == {"a1": "alice", "b2": "bob"}
    assert parse_tokens("with:colon:carol") == {"with:colon": "carol"}
    for bad in ("noowner", ":x", "tok:", "tok:bad owner!"):
        with pytest.raises(ValueError):
            parse_tokens(bad)


def test_development_defaults(monkeypatch, tmp_path):
    for var in ("REDIS_URL", "RAY_ADDRESS", "RECTRAIN_API_TOKENS", "RECTRAIN_ENV", "RECTRAIN_LAUNCHER"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.env == "development" and s.tokens == {DEV_TOKEN: "dev"} and s.uses_dev_token
    assert s.redis_url is None and s.effective_launcher == "local" and str(s.data_dir) == ".rectrain"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    monkeypatch.setenv("RECTRAIN_API_TOKENS", f"{GOOD}:alice")
    monkeypatch.setenv("RECTRAIN_MAX_BODY_BYTES", "4096")
    s = Settings()
    assert s.effective_launcher == "ray" and s.tokens == {GOOD: "alice"} and s.max_body_bytes == 4096


@pytest.mark.parametrize(
    "tokens",
    [
        None,
        f"{DEV_TOKEN}:dev",
        "change-me-alice-token-123456:alice",
        "short:alice",
        f"{GOOD}:alice,changeme:bob",
    ],
)
def test_production_refuses_placeholder_tokens(tokens):
    with pytest.raises(ValidationError, match="RECTRAIN_API_TOKENS"):
        Settings(env="production", api_tokens=tokens, redis_url="redis://r:6379/0")


def test_production_needs_redis_and_accepts_real_tokens():
    with pytest.raises(ValidationError, match="REDIS_URL"):
        Settings(env="production", api_tokens=f"{GOOD}:alice")
    s = Settings(env="production", api_tokens=f"{GOOD}:alice", redis_url="redis://r:6379/0")
    assert s.tokens == {GOOD: "alice"} and not s.uses_dev_token


def test_ray_launcher_needs_an_address():
    with pytest.raises(ValidationError, match="RAY_ADDRESS"):
        Settings(launcher="ray", ray_address=None)


def test_storage_uri_defaults_to_the_data_dir_and_refuses_keys(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from services.launcher import RayJobsBackend, settings_env

    monkeypatch.delenv("RECTRAIN_STORAGE_URI", raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.storage_uri is None and s.effective_storage_uri == str(tmp_path.resolve())
    assert "RECTRAIN_STORAGE_URI" not in settings_env(s, "redis://x")
    with pytest.raises(ValidationError, match="RECTRAIN_STORAGE_URI: credentials do not belong in a URI"):
        Settings(storage_uri="s3://bucket/p?access_key=AKIA&secret_key=s")
    monkeypatch.setenv("RECTRAIN_STORAGE_URI", "s3://bucket/rectrain")
    s = Settings(data_dir=tmp_path)
    assert s.effective_storage_uri == "s3://bucket/rectrain"
    # the local trainer and a Ray job's driver both get it
    assert settings_env(s, "redis://x")["RECTRAIN_STORAGE_URI"] == "s3://bucket/rectrain"
    job = SimpleNamespace(id="j1", ray_submission_id=None)
    assert (
        RayJobsBackend(s, job, "redis://x")._env_vars("e30=")["RECTRAIN_STORAGE_URI"]
        == "s3://bucket/rectrain"
    )
