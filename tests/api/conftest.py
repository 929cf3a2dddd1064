"""Fixtures for API tests (helpers live in api_helpers.py: both test dirs have a conftest)."""

from __future__ import annotations

import pytest
from api_helpers import ALICE, BOB, TOKENS, ThreadServer, client_for

from services.settings import Settings
from tests.control_plane import control_plane_settings


@pytest.fixture
def settings(redis_url, redis_client, tmp_path, fake_trainer_path) -> Settings:
    return control_plane_settings(
        redis_url, tmp_path / "data", api_tokens=TOKENS, sse_keepalive_s=0.5, max_body_bytes=64 * 1024
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
