"""Start a test script as two real gloo ranks (one process each) and wait for both.

Shared by the two-rank tests (tests/trainer/test_two_ranks.py, test_pipeline.py,
tests/regularizers/test_reset_min_count.py): each script takes
``RANK WORLD_SIZE PORT *args`` and writes what the test reads under ``out``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.net import free_port

REPO = Path(__file__).resolve().parents[1]


def run_two_ranks(script: Path, out: Path, *args: str, timeout_s: float = 300) -> None:
    """Run ``script RANK 2 PORT *args`` for ranks 0 and 1 (one torch thread each, logs
    in ``out/rank_R.log``); fails the test with both logs' tails unless both exit 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    port = str(free_port())
    logs = [open(out / f"rank_{r}.log", "w") for r in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), "2", port, *args],
            cwd=REPO,
            env=env,
            stdout=logs[r],
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    try:
        codes = [p.wait(timeout=timeout_s) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    if codes != [0, 0]:
        tails = "\n".join((out / f"rank_{r}.log").read_text()[-3000:] for r in range(2))
        pytest.fail(f"two-rank run failed with exit codes {codes}:\n{tails}")


class RankSession:
    """The trainer's session inside a rank script: this rank of a CPU gloo world, no
    checkpoints, nothing reported (the script dumps what the test reads)."""

    def __init__(self, rank: int, world_size: int) -> None:
        import torch

        self.rank, self.world_size, self.device = rank, world_size, torch.device("cpu")

    def checkpoint_dir(self):
        return None

    def report(self, metrics, checkpoint_dir) -> None:
        pass
