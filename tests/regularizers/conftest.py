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


@pytest.fixture(scope="session")
def two_rank_runs(tmp_path_factory) -> dict[str, dict]:
    """One 2-process gloo run (tests/regularizers/two_rank_worker.py) of every 2-rank
    regularizer job: name -> {"ranks": [rank 0's dump, rank 1's], "ckpt": its checkpoint}."""
    import torch
    import torch.multiprocessing as mp
    from reg_helpers import two_rank_dict
    from two_rank_worker import run_rank

    from tests.net import free_port

    out = tmp_path_factory.mktemp("two_rank_regs")
    jobs = [
        {"name": "freq_decay", "regs": [{"type": "freq_decay", "alpha": 0.03}]},
        {
            "name": "counter",
            "regs": [{"type": "sparse_l2", "weight": 0.2, "mode": "counter", "counter_halflife": 3}],
        },
    ]
    specs = [
        {"name": j["name"], "spec": two_rank_dict(j["regs"]), "steps": 20, "save_to": str(out / j["name"])}
        for j in jobs
    ]
    mp.start_processes(
        run_rank, args=(2, free_port(), specs, str(out)), nprocs=2, join=True, start_method="spawn"
    )
    return {
        j["name"]: {
            "ranks": [torch.load(out / f"{j['name']}_rank_{r}.pt", weights_only=False) for r in range(2)],
            "ckpt": out / j["name"],
            "spec": j["spec"],
        }
        for j in specs
    }
