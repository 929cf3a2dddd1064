"""What a job's runner starts from: its environment (every setting written out, so a
runner sees the settings the API was built with) and its run directory
(``DATA_DIR/runs/JOB_ID``). Shared by the API's :class:`services.launcher.JobLauncher`
and the runner's backends (services/backends.py, services/warm_backend.py).
:func:`pythonpath_with` is how the child processes started here, by serve's Ray head,
by the benchmarks and by the tests find this checkout's packages."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from services.settings import Settings, env_var

REPO_ROOT = Path(__file__).resolve().parents[1]


def pythonpath_with(*dirs: str | Path, env: Mapping[str, str] = os.environ) -> str:
    """``PYTHONPATH`` for a child process: ``dirs`` first, then ``env``'s own entries
    (empty ones dropped: an empty entry would put the child's working directory on its path)."""
    return os.pathsep.join(p for p in (*map(str, dirs), env.get("PYTHONPATH", "")) if p)


def settings_env(settings: Settings, redis_url: str) -> dict[str, str]:
    """The runner's environment: ours, with every setting written out (so a runner started
    from settings built in code, e.g. by tests, sees the same settings). The runner keeps
    the API tokens from its trainer (LocalBackend)."""
    env = dict(os.environ)
    for name in Settings.model_fields:
        var = env_var(Settings, name)
        v = getattr(settings, name)
        if name == "redis_url":
            v = redis_url
        if name == "data_dir":
            v = Path(v).resolve()
        if v is None:
            env.pop(var, None)
        else:
            env[var] = str(v)
    env["PYTHONPATH"] = pythonpath_with(REPO_ROOT, env=env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_dir_for(settings: Settings, job_id: str) -> Path:
    return Path(settings.data_dir).resolve() / "runs" / job_id
