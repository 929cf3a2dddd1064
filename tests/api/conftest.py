"""Fixtures for API tests (helpers live in api_helpers.py: both test dirs have a conftest)."""

from __future__ import annotations

import os

import pytest
from api_helpers import ALICE, BOB, FAKE_TRAINER_DIR, TOKENS, ThreadServer, client_for

from services.settings import Settings


@pytest.fixture
def fake_trainer_path(monkeypatch):
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(FAKE_TRAINER_DIR), os.environ.get("PYTHONPATH", "")])
    )


@pytest.fixture
def settings(redis_url, redis_client, tmp_path, fake_trainer_path) -> Settings:
    return Settings(
        redis_url=redis_url,
        api_tokens=TOKENS,
        data_dir=tmp_path / "data",
        launcher="local",
        ray_address=None,
        heartbeat_interval_s=0.3,
        heartbeat_ttl_s=1.5,
        reaper_interval_s=0.3,
        cancel_grace_s=3.0,
        trainer_module="fake_trainer",
        sse_keepalive_s=0.5,
        max_body_bytes=64 * 1024,
    )


@pytest.fixture
def server(settings):
    from api.main import create_app

    s = ThreadServer(create_app(settings)).start()
    yield s
    s.stop()


@pytest.fixture
def alice(server):
    with client_for(server.url, ALICE) as c:
        yield c


@pytest.fixture
def bob(server):
    with client_for(server.url, BOB) as c:
        yield c
