"""Launching and supervising training jobs: the API's side, :class:`JobLauncher`.

For every job the API starts a *runner* (``python -m services.runner JOB_ID``), a small
detached process that owns the job until it ends (services/job_runner.py: claim,
start, supervise, record the outcome). Where the pieces live:

- services/launch_env.py — the runner's environment and run directory;
- services/heartbeat.py — the runner's lease on its job (one runner per job);
- services/backends.py — how the trainer runs: :class:`LocalBackend` runs ``rectrain
  run`` as a subprocess (local Ray, or the Ray at RAY_ADDRESS when the launcher is
  forced to ``local``); :class:`RayJobsBackend` submits it to a Ray cluster through the
  Ray Jobs API (KubeRay). Cancel sends SIGTERM (the trainer aborts Ray Train and exits
  143) or ``stop_job``; after ``cancel_grace_s`` the process group is killed;
- services/warm_backend.py — study runs on warm worker groups (:class:`WarmBackend`).

Because runners are detached from the API process, restarting the API does not touch
running jobs. If a runner dies, its heartbeat expires and the API's reaper
(:mod:`services.reaper`) marks the job failed with the reason, kills the orphaned
trainer (:func:`stop_orphan`), and for Ray jobs first tries to re-attach a new runner to
the still-running Ray job.
"""

from __future__ import annotations

import subprocess
import sys

from services.backends import Backend, LocalBackend, Outcome, RayJobsBackend, stop_orphan
from services.heartbeat import ADOPT_PLACEHOLDER, Heartbeat
from services.job_runner import make_backend, run_job, wall_limit_s
from services.launch_env import REPO_ROOT, run_dir_for, settings_env
from services.settings import Settings
from services.warm_backend import WarmBackend, next_warm_job, runs_warm, warm_ray_address

__all__ = [
    "ADOPT_PLACEHOLDER",
    "Backend",
    "Heartbeat",
    "JobLauncher",
    "LocalBackend",
    "Outcome",
    "RayJobsBackend",
    "WarmBackend",
    "make_backend",
    "next_warm_job",
    "run_dir_for",
    "run_job",
    "runs_warm",
    "settings_env",
    "stop_orphan",
    "wall_limit_s",
    "warm_ray_address",
]


class JobLauncher:
    """Starts runner processes for the API (and keeps their exit statuses collected)."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self._children: list[subprocess.Popen] = []
        from services.capacity import CapacityReader  # the API's, not the runners'

        # the cluster's capacity, shared by admission (services.submit) and the dispatcher
        self.capacity = CapacityReader(settings)

    @property
    def kind(self) -> str:
        return self.settings.effective_launcher

    def launch(self, job_id: str, *, adopt: bool = False) -> subprocess.Popen:
        self.collect()
        d = run_dir_for(self.settings, job_id)
        d.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "services.runner", job_id] + (["--adopt"] if adopt else [])
        with open(d / "runner.log", "ab") as log:
            # own session: survives the API process and its terminal's signals
            p = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=settings_env(self.settings, self.redis_url),
                start_new_session=True,
                cwd=str(REPO_ROOT),
            )
        self._children.append(p)
        return p

    def collect(self) -> None:
        """Reap runners that have exited (no zombies)."""
        self._children = [p for p in self._children if p.poll() is None]
