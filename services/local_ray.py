"""The one long-lived local Ray head that ``rectrain serve`` owns in the embedded default.

Without ``RAY_ADDRESS`` (and with ``RECTRAIN_LAUNCHER`` left at ``auto``), ``rectrain
serve`` starts ``ray start --head --block`` in its own process group (CPU priority
lowered by ``RECTRAIN_TRAINER_NICE``, so the API and Redis stay responsive), points the
service at its dashboard (Ray Jobs launcher) and stops exactly that process group when it
exits. It records the head (pid, address) in the data directory, so that a serve
killed before it could stop it has that head stopped by the next serve
(:func:`reclaim_orphan`). The head binds and advertises 127.0.0.1 only
(:data:`LOOPBACK_ARGS`, :data:`LOOPBACK_ENV`): serve runs it without token auth. Every job then runs on this one Ray instead of paying its own ``ray.init()``, and
Ray's resource accounting backs the queue. ``rectrain run`` alone is unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.launch_env import pythonpath_with
from services.settings import Settings, env_var

_REPO_ROOT = Path(__file__).resolve().parents[1]
# what keeps a Ray head (and everything it starts) on 127.0.0.1: the node IP every Ray
# server binds and advertises; the dashboard's own host (its agents follow the node IP)
LOOPBACK_ARGS = ("--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1")
# Ray 2.60 replaces a loopback --node-ip-address by the machine's address unless it runs
# in its single-machine mode (the one it uses on macOS/Windows: the node IP is 127.0.0.1)
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class HeadInUse(RuntimeError):
    """The data directory's Ray head belongs to a ``rectrain serve`` that still runs."""


def _alive(pid: int, create_time: float | None) -> bool:
    """Is ``pid`` the process that was started at ``create_time`` (not a reused pid)?"""
    import psutil

    try:
        p = psutil.Process(pid)
        return create_time is None or abs(p.create_time() - create_time) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def reclaim_orphan(record: Path, timeout_s: float = 10.0) -> str | None:
    """Stop the Ray head a previous ``rectrain serve`` of this data directory started and
    left running (killed with SIGKILL, it could not stop it): its process group, as
    recorded in ``record`` (pid and start time, so a reused pid is never signalled).
    Returns what it did, or None. Raises :class:`HeadInUse` if that serve still runs."""
    try:
        rec = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    owner, head = int(rec.get("serve_pid", 0)), int(rec.get("head_pid", 0))
    if owner and owner != os.getpid() and _alive(owner, rec.get("serve_started")):
        raise HeadInUse(
            f"rectrain serve (pid {owner}) already runs with this data directory ({record.parent}); "
            "stop it first, or give this one its own RECTRAIN_DATA_DIR"
        )
    done = None
    if head and _alive(head, rec.get("head_started")):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout_s
            while _alive(head, rec.get("head_started")) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _alive(head, rec.get("head_started")):
                break
        done = (
            f"stopped the Ray head (pid {head}, {rec.get('address')}) a previous rectrain serve left running"
        )
    if rec.get("temp_dir"):
        shutil.rmtree(rec["temp_dir"], ignore_errors=True)
    record.unlink(missing_ok=True)
    return done


class LocalRayHead:
    """``ray start --head --block`` as a child process group of this process."""

    def __init__(
        self, log_path: Path, *, num_cpus: int | None = None, nice: int = 10, record: Path | None = None
    ) -> None:
        self.log_path = Path(log_path)
        # where this head is recorded (pid, address) for the next serve to reclaim it
        self.record = record
        self.num_cpus = num_cpus or len(os.sched_getaffinity(0)) or os.cpu_count() or 1
        self.nice = nice
        self.port = _free_port()
        self.dashboard_port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.temp_dir: str | None = None

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> str:
        """Start the head; returns its dashboard URL (the Ray Jobs API) once it answers."""
        ray_cli = Path(sys.executable).parent / "ray"
        # not Ray's RAY_ADDRESS (this head is its own cluster), nor the API's tokens
        drop = ("RAY_ADDRESS", env_var(Settings, "api_tokens"))
        env = {k: v for k, v in os.environ.items() if k not in drop}
        # the job drivers and Ray Train workers import this checkout's packages
        env["PYTHONPATH"] = pythonpath_with(_REPO_ROOT, env=env)
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env.update(LOOPBACK_ENV)
        os.environ.update(LOOPBACK_ENV)  # this process's own Ray clients and its runners agree
        # One auth mode for the head and its clients (this process, job drivers): Ray 2.60's
        # `ray start` turns token auth on by itself when ~/.ray/auth_token exists while its
        # clients default to "disabled", and then serve cannot even read the head's
        # resources. Unless the operator chose a mode, the head serve owns runs without
        # tokens, as the single-box default always has (its dashboard binds 127.0.0.1).
        mode = os.environ.get("RAY_AUTH_MODE") or "disabled"
        env["RAY_AUTH_MODE"] = mode
        os.environ["RAY_AUTH_MODE"] = mode
        # Ray's workers (the Ray Train workers that do the training) at a lower CPU
        # priority; the head's own processes (GCS, raylet, dashboard and job agent) keep
        # the normal one, or a busy box starves them and the Jobs API stops answering
        if self.nice > 0:
            env["RAY_worker_niceness"] = str(self.nice)
        # Ray processes that look the cluster up by themselves (Ray Train's placement
        # group cleaner asks the State API whether its controller is alive) must find this
        # head, not whichever Ray started last on the machine (/tmp/ray/ray_current_cluster):
        # else they see the controller "gone" and remove a running job's placement group
        env["RAY_API_SERVER_ADDRESS"] = self.dashboard_url
        env["RAY_ADDRESS"] = self.address
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # A temp dir of its own: Ray's job supervisor gives each job's driver the address
        # in <temp dir>/ray_current_cluster, which in the shared /tmp/ray names whichever
        # Ray started last on the machine. Short, for Ray's socket paths.
        self.temp_dir = tempfile.mkdtemp(prefix="rectrain-ray-", dir="/tmp")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(ray_cli if ray_cli.exists() else "ray"),
                    "start",
                    "--head",
                    "--block",
                    f"--port={self.port}",
                    # loopback only: Ray binds its servers (GCS, raylet, object manager,
                    # agents, workers) to the node IP, and serve runs it without token auth
                    *LOOPBACK_ARGS,
                    f"--num-cpus={self.num_cpus}",
                    "--include-dashboard=true",
                    f"--dashboard-port={self.dashboard_port}",
                    # free ports for the node's agents: Ray's fixed defaults (52365 for the
                    # agent that runs Ray Jobs) collide with any other Ray on the machine,
                    # and then the Jobs API never accepts a job
                    f"--dashboard-agent-listen-port={_free_port()}",
                    f"--dashboard-agent-grpc-port={_free_port()}",
                    f"--runtime-env-agent-port={_free_port()}",
                    f"--metrics-export-port={_free_port()}",
                    f"--ray-client-server-port={_free_port()}",
                    f"--temp-dir={self.temp_dir}",
                    "--disable-usage-stats",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._write_record()
        deadline = time.monotonic() + timeout_s
        while not (_listening(self.port) and _listening(self.dashboard_port)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with code {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"the local Ray head did not answer in {timeout_s:g} s; see {self.log_path}"
                )
            time.sleep(0.2)
        # serve only once Ray reports the node and its resources (admission reads them)
        from services.capacity import ray_totals

        while True:
            try:
                ray_totals(self.dashboard_url)
                self._jobs_api_ready()
                return self.dashboard_url
            except Exception as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"the local Ray head reports no resources ({e}); see {self.log_path}"
                    ) from e
                time.sleep(0.5)

    def _write_record(self) -> None:
        if self.record is None or self.proc is None:
            return
        rec = {
            "serve_pid": os.getpid(),
            "serve_started": _create_time(os.getpid()),
            "head_pid": self.proc.pid,  # also its process group (start_new_session)
            "head_started": _create_time(self.proc.pid),
            "address": self.address,
            "dashboard": self.dashboard_url,
            "temp_dir": self.temp_dir,
        }
        self.record.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_name(self.record.name + ".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(self.record)

    def _jobs_api_ready(self) -> None:
        """Raises until the head's job agent accepts submissions (it starts well after the
        dashboard port opens: 'No available agent to submit job')."""
        from ray.job_submission import JobSubmissionClient

        JobSubmissionClient(self.dashboard_url).submit_job(
            entrypoint="true", submission_id=f"rectrain-ready-{os.urandom(4).hex()}"
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop this head's process group (never any other Ray on the machine)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:  # stragglers of the group (workers, drivers)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout_s)
        self.proc = None
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
        if self.record is not None:
            self.record.unlink(missing_ok=True)
