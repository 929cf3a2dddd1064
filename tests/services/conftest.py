"""Fixtures for the control-plane services: settings on the session Redis, a store, runners
that use the fake trainer (tests/services/fake_trainer.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.settings import Settings

HERE = Path(__file__).resolve().parent


@pytest.fixture
def fake_trainer_path(monkeypatch):
    """Make ``python -m fake_trainer`` importable in runner/trainer subprocesses."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture
def settings(redis_url, redis_client, tmp_path, fake_trainer_path) -> Settings:
    return Settings(
        redis_url=redis_url,
        api_tokens="tok-alice:alice,tok-bob:bob",
        data_dir=tmp_path / "data",
        launcher="local",
        ray_address=None,
        heartbeat_interval_s=0.3,
        heartbeat_ttl_s=1.5,
        reaper_interval_s=0.3,
        cancel_grace_s=3.0,
        trainer_module="fake_trainer",
        sse_keepalive_s=1.0,
    )
