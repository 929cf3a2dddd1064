"""Which heavy libraries importing some modules loads, checked in a fresh interpreter
(the API, the client and the spec modules must load without torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchrec", "fbgemm_gpu", "ray")


def heavy_imports(*modules: str) -> list[str]:
    """The libraries of :data:`HEAVY` in ``sys.modules`` after importing ``modules``
    in a new Python process (only this repository on its path)."""
    code = (
        "import importlib, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    return [m for m in r.stdout.strip().split(",") if m]
