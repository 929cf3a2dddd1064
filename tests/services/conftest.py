"""Fixtures for the control-plane services: settings on the session Redis, a store, runners
that use the fake trainer (tests/services/fake_trainer.py)."""

from __future__ import annotations

import pytest

from services.settings import Settings
from tests.control_plane import control_plane_settings


@pytest.fixture
def settings(redis_url, redis_client, tmp_path, fake_trainer_path) -> Settings:
    return control_plane_settings(redis_url, tmp_path / "data")
