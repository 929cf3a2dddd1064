"""The settings of a test control plane, shared by the services, API and dashboard tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.settings import Settings

# tests/services/fake_trainer.py: the stand-in trainer (``trainer_module="fake_trainer"``)
FAKE_TRAINER_DIR = Path(__file__).resolve().parent / "services"


def control_plane_settings(redis_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """The session Redis, the local launcher running the fake trainer, fast heartbeats;
    ``overrides`` change any field. Needs the ``fake_trainer_path`` fixture."""
    base: dict[str, Any] = {
        "redis_url": redis_url,
        "api_tokens": "tok-alice:alice,tok-bob:bob",
        "data_dir": data_dir,
        "launcher": "local",
        "ray_address": None,
        "heartbeat_interval_s": 0.3,
        "heartbeat_ttl_s": 1.5,
        "reaper_interval_s": 0.3,
        "cancel_grace_s": 3.0,
        "trainer_module": "fake_trainer",
        "sse_keepalive_s": 1.0,
    }
    return Settings(**{**base, **overrides})
