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
