"""Fixtures of the regularizer tests (helpers live in reg_helpers.py)."""

from __future__ import annotations

from typing import Any

import pytest
from reg_helpers import make_spec

from trainer.loop import LocalSession, Trainer


@pytest.fixture
def session(tmp_path) -> LocalSession:
    """A fresh single-process session per test (its own checkpoint dir); the gloo
    process group of size 1 is created once and reused."""
    return LocalSession(tmp_path)


@pytest.fixture
def make_trainer(session, tmp_path):
    def make(regularizers: list[dict] | None = None, **over: Any) -> Trainer:
        return Trainer(make_spec(regularizers, **over), session, tmp_path)

    return make
