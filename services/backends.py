"""How a runner starts, watches and stops one job's trainer: the :class:`Backend`
protocol and its :class:`Outcome`, and the two launchers' backends.

:class:`LocalBackend` runs ``rectrain run`` as a local subprocess in a process group of
its own (local Ray, or the Ray at RAY_ADDRESS when the launcher is forced to ``local``);
:class:`RayJobsBackend` submits it to a Ray cluster through the Ray Jobs API (KubeRay).
A study run on a warm worker group has its own backend (services/warm_backend.py);
which one a job gets is :func:`services.job_runner.make_backend`. :func:`stop_orphan`
is the reaper's stop of a trainer whose runner died.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.jobs import JobRecord
from services.launch_env import run_dir_for
from services.settings import Settings, env_var
from trainer.lifecycle import read_results
from trainer.results import RunResult

POLL_S = 0.5  # how often a runner looks at its trainer and its job
_STDERR_TAIL_CHARS = 1500
_RAY_UNREACHABLE_S = 60.0  # a Ray dashboard unreachable this long fails the job


@dataclass
class Outcome:
    ok: bool
    reason: str | None = None  # why it failed
    results: RunResult | None = None  # results.json, when the backend can read it


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"trainer process was killed by {name}"
    return f"trainer exited with code {rc}"


def _tail(path: Path, chars: int = _STDERR_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-8:])


def _nice(n: int):
    """A preexec_fn lowering the child's CPU priority (the API and Redis stay responsive)."""
    if n <= 0:
        return None
    return lambda: os.nice(n)


class Backend(Protocol):
    """How a runner starts, watches and stops one job's trainer."""

    kind: str

    async def start(self) -> dict[str, Any]:
        """Start the trainer; the job fields to record (pid, submission id, run dir)."""
        ...

    async def poll(self) -> Outcome | None:
        """None while the trainer runs; its outcome once it has ended."""
        ...

    async def stop(self, grace_s: float) -> None:
        """Ask the trainer to stop; force it after ``grace_s``."""
        ...


class LocalBackend:
    """Runs the trainer as a local subprocess in its own process group."""

    kind = "local"

    def __init__(self, settings: Settings, job: JobRecord, trainer_redis_url: str) -> None:
        self.settings = settings
        self.job = job
        self.redis_url = trainer_redis_url
        self.run_dir = run_dir_for(settings, job.id)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.run_dir / "spec.json"
        spec_path.write_text(json.dumps(self.job.spec, indent=1))
        cmd = [
            self.settings.trainer_python,
            "-m",
            self.settings.trainer_module,
            "run",
            str(spec_path),
            "--run-dir",
            str(self.run_dir),
            "--job-id",
            self.job.id,
            "--redis-url",
            self.redis_url,
            "--no-progress",
        ]
        env = {k: v for k, v in os.environ.items() if k != env_var(Settings, "api_tokens")}
        env["PYTHONUNBUFFERED"] = "1"
        if self.job.dispatched_at:  # the first mark of the trainer's "startup" event
            env["RECTRAIN_DISPATCHED_AT"] = repr(self.job.dispatched_at)
        with open(self.run_dir / "stdout.log", "ab") as out, open(self.run_dir / "stderr.log", "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                cwd=str(self.run_dir),
                preexec_fn=_nice(self.settings.trainer_nice),
            )
        return {"trainer_pid": self.proc.pid, "run_dir": str(self.run_dir)}

    async def poll(self) -> Outcome | None:
        assert self.proc is not None
        rc = self.proc.returncode
        if rc is None:
            try:
                rc = await asyncio.wait_for(self.proc.wait(), 0.01)
            except TimeoutError:
                return None
        self._kill_group()  # leftovers (e.g. a local Ray the trainer started)
        if rc == 0:
            return Outcome(ok=True, results=read_results(str(self.run_dir)))
        tail = _tail(self.run_dir / "stderr.log")
        reason = _describe_exit(rc) + (f": {tail}" if tail else "")
        return Outcome(ok=False, reason=reason)

    async def stop(self, grace_s: float) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)  # the trainer aborts Ray Train and exits
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            self._kill_group()
            await self.proc.wait()

    def _kill_group(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class RayJobsBackend:
    """Submits the trainer to a Ray cluster through the Ray Jobs API (dashboard address)."""

    kind = "ray"

    def __init__(self, settings: Settings, job: JobRecord, trainer_redis_url: str) -> None:
        self.settings = settings
        self.job = job
        self.redis_url = trainer_redis_url
        self.submission_id = job.ray_submission_id or f"rectrain-{job.id}"
        self._client = None
        self._unreachable_since: float | None = None

    def _get_client(self):
        from ray.job_submission import JobSubmissionClient  # only the Ray launcher needs Ray

        if self._client is None:
            self._client = JobSubmissionClient(self.settings.ray_address)
        return self._client

    async def _call(self, method: str, *args, **kw):
        """A JobSubmissionClient call, retried while the dashboard is unreachable (bounded)."""
        deadline = time.monotonic() + _RAY_UNREACHABLE_S
        delay = 0.5
        while True:
            try:
                client = await asyncio.to_thread(self._get_client)
                return await asyncio.to_thread(getattr(client, method), *args, **kw)
            except (ConnectionError, OSError, RuntimeError) as e:
                transient = not isinstance(e, RuntimeError) or "try again" in str(e).lower()
                if method == "submit_job" and "already exists" in str(e):
                    return kw.get("submission_id")  # an earlier try got through
                if not transient:
                    raise
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"Ray dashboard at {self.settings.ray_address} unreachable: {e}"
                    ) from e
                self._client = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _stored_results(self) -> RunResult | None:
        """results.json from the job's storage (only shared storage outlives the driver's temp dir)."""
        from trainer import storage

        root = self._storage_uri()
        if root is None:
            return None
        return read_results(storage.job_location(root, self.job.id))

    def _storage_uri(self) -> str | None:
        """The jobs' storage root: RECTRAIN_STORAGE_URI (shared by every node), else, for a
        Ray head on this machine (serve's own), the data directory; else none (the driver
        keeps the run in a temp dir on the head, and its model cannot be exported)."""
        if self.settings.storage_uri:
            return self.settings.storage_uri
        addr = self.settings.ray_address or ""
        host = addr.split("://", 1)[-1].split(":", 1)[0]
        if host in ("", "127.0.0.1", "localhost"):
            return self.settings.effective_storage_uri
        return None

    def _env_vars(self, spec_b64: str) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1", "RECTRAIN_SPEC_B64": spec_b64}
        root = self._storage_uri()
        if root is not None:  # checkpoints and results where export and init_from find them
            env[env_var(Settings, "storage_uri")] = root
        return env

    async def start(self) -> dict[str, Any]:
        # The spec travels in the job's env (not a working_dir package: Ray Train workers
        # then need that package too); the driver writes it to a temp dir on the head.
        spec_b64 = base64.b64encode(json.dumps(self.job.spec).encode()).decode()
        py = shlex.quote(self.settings.ray_python)
        entrypoint = (
            'd="$(mktemp -d)" && '
            f'{py} -c \'import base64, os, sys; open(sys.argv[1], "wb").write('
            f'base64.b64decode(os.environ["RECTRAIN_SPEC_B64"]))\' "$d/spec.json" && '
            f'exec {py} -m {shlex.quote(self.settings.trainer_module)} run "$d/spec.json" '
            f'--run-dir "$d/run" --job-id {self.job.id} --redis-url {shlex.quote(self.redis_url)} --no-progress'
        )
        await self._call(
            "submit_job",
            entrypoint=entrypoint,
            submission_id=self.submission_id,
            runtime_env={"env_vars": self._env_vars(spec_b64)},
            metadata={"rectrain_job_id": self.job.id, "owner": self.job.owner},
        )
        return {"ray_submission_id": self.submission_id}

    async def poll(self) -> Outcome | None:
        from ray.job_submission import JobStatus as RayStatus

        try:
            info = await self._call("get_job_info", self.submission_id)
        except ConnectionError as e:
            return Outcome(ok=False, reason=f"lost contact with the Ray cluster: {e}")
        if info.status in (RayStatus.PENDING, RayStatus.RUNNING):
            return None
        if info.status == RayStatus.SUCCEEDED:
            return Outcome(ok=True, results=await asyncio.to_thread(self._stored_results))
        reason = f"Ray job {self.submission_id} {info.status.value.lower()}"
        if info.message:
            reason += f": {info.message.strip()}"
        try:
            logs = await self._call("get_job_logs", self.submission_id)
            tail = "\n".join([ln for ln in logs.strip().splitlines() if ln.strip()][-8:])
            if tail:
                reason += f"\n{tail[-_STDERR_TAIL_CHARS:]}"
        except Exception:  # logs are a courtesy
            pass
        return Outcome(ok=False, reason=reason)

    async def stop(self, grace_s: float) -> None:
        try:
            await self._call("stop_job", self.submission_id)
        except ConnectionError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if await self.poll() is not None:
                return
            await asyncio.sleep(POLL_S)


def stop_orphan(job: JobRecord, settings: Settings) -> str | None:
    """Best-effort stop of a job's trainer after its runner died; says what it did."""
    if job.launcher == "ray" and job.ray_submission_id and settings.ray_address:
        try:
            from ray.job_submission import JobSubmissionClient

            JobSubmissionClient(settings.ray_address).stop_job(job.ray_submission_id)
            return f"stopped Ray job {job.ray_submission_id}"
        except Exception as e:
            return f"could not stop Ray job {job.ray_submission_id}: {e}"
    if job.trainer_pid and job.runner_host == socket.gethostname():
        try:
            os.killpg(job.trainer_pid, signal.SIGKILL)
            return f"killed trainer process group {job.trainer_pid}"
        except (ProcessLookupError, PermissionError):
            return None
    return None
