"""Issue 17, point 5: the local Ray is never inflated past the machine; ``rectrain run``
refuses a job that needs more CPUs than the machine has, with the numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.trainer.specs import tiny_spec_dict

REPO = Path(__file__).resolve().parents[2]


def test_rectrain_run_refuses_more_workers_than_cpus(tmp_path):
    cpus = os.cpu_count() or 1
    workers = cpus + 62
    spec = tiny_spec_dict(scaling={"num_workers": workers}, metrics={"window_size": 256 * workers})
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.cli",
            "run",
            str(path),
            "--run-dir",
            str(tmp_path / "run"),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    assert r.returncode == 2, r.stderr
    assert f"{workers} workers x 1 CPUs" in r.stderr and f"this machine has {cpus}" in r.stderr, r.stderr
    assert "RAY_ADDRESS" in r.stderr
    assert not (tmp_path / "run" / "ray").exists()  # no Ray was started
