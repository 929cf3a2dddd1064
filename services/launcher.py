"""Launching and supervising training jobs.

For every job the API starts a *runner* (``python -m services.runner JOB_ID``), a small
detached process that owns the job until it ends:

1. claims the job's heartbeat key (SET NX) — one runner per job;
2. moves it queued -> starting, starts the trainer through a backend, -> running;
3. refreshes the heartbeat, watches the trainer and the job's cancel flag;
4. on exit records the result and moves it to succeeded / failed (with the reason) /
   cancelled.

Backends: :class:`LocalBackend` runs ``rectrain run`` as a subprocess (local Ray, or the
Ray at RAY_ADDRESS when the launcher is forced to ``local``); :class:`RayJobsBackend`
submits it to a Ray cluster through the Ray Jobs API (KubeRay). Cancel sends SIGTERM
(the trainer aborts Ray Train and exits 143) or ``stop_job``; after
``cancel_grace_s`` the process group is killed.

Because runners are detached from the API process, restarting the API does not touch
running jobs. If a runner dies, its heartbeat expires and the API's reaper
(:mod:`services.reaper`) marks the job failed with the reason, kills the orphaned
trainer, and for Ray jobs first tries to re-attach a new runner to the still-running
Ray job.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services import keys
from services.jobs import DISPATCHED_PLACEHOLDER, IllegalTransition, JobRecord, JobStatus, JobStore
from services.metrics_bus import progress_from_results
from services.redis_conn import LEASE_REFRESH_LUA, LEASE_RELEASE_LUA
from services.settings import Settings, env_var
from trainer.lifecycle import read_results
from trainer.results import EVENTS_FILE, RunResult

_POLL_S = 0.5
_STDERR_TAIL_CHARS = 1500
_REDIS_RETRY_FOR_S = 600.0
_RAY_UNREACHABLE_S = 60.0  # a Ray dashboard unreachable this long fails the job

_REPO_ROOT = Path(__file__).resolve().parents[1]


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
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_dir_for(settings: Settings, job_id: str) -> Path:
    return Path(settings.data_dir).resolve() / "runs" / job_id


# ------------------------------------------------------------------------ API side


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
                cwd=str(_REPO_ROOT),
            )
        self._children.append(p)
        return p

    def collect(self) -> None:
        """Reap runners that have exited (no zombies)."""
        self._children = [p for p in self._children if p.poll() is None]


# ------------------------------------------------------------------------ backends


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
            await asyncio.sleep(_POLL_S)


class _WarmState:
    """This runner process's warm worker groups (one per resource shape) and the Ray it
    joined: kept from one study run to the next (:func:`run_job`)."""

    pool: Any = None  # trainer.warm.WarmPool
    used = False  # the last job ran on a warm group

    @classmethod
    def get_pool(cls, settings: Settings, spec: Any) -> Any:
        from trainer.warm import WarmPool, connect

        if cls.pool is None:
            connect(spec, warm_ray_address(settings))
            cls.pool = WarmPool()
        return cls.pool

    @classmethod
    def close(cls) -> None:
        if cls.pool is not None:
            with contextlib.suppress(Exception):
                cls.pool.close()
            cls.pool = None


def warm_ray_address(settings: Settings) -> str | None:
    """The Ray a warm worker group's driver (this runner) joins: RECTRAIN_RAY_GCS_ADDRESS,
    else RAY_ADDRESS when it is a GCS address (the local launcher's), else none (a local
    Ray of this machine)."""
    if settings.ray_gcs_address:
        return settings.ray_gcs_address
    if settings.ray_address and "://" not in settings.ray_address:
        return settings.ray_address
    return None


def runs_warm(settings: Settings, job: JobRecord) -> bool:
    """Whether a job runs on a warm worker group: a study run, with warm studies on
    (RECTRAIN_WARM_STUDIES) and rectrain's own trainer (RECTRAIN_TRAINER_MODULE), where
    this runner can join the Ray as a driver (the local launcher; with the Ray Jobs
    launcher only when the GCS address is known)."""
    if not settings.warm_studies or "study" not in job.labels:
        return False
    if settings.trainer_module != "trainer.cli":  # a stand-in trainer: it runs as configured
        return False
    kind = job.launcher or settings.effective_launcher
    return kind == "local" or settings.ray_gcs_address is not None


class WarmBackend:
    """Runs a study run on this runner's warm worker group of its shape (trainer/warm.py):
    the group's driver is this process; the run's results and run directory are those of
    ``rectrain run``. Cancel ends the group (the run stops at once and the group is
    started again for a later run); a worker that dies is replaced and the run retried
    once (trainer.warm.WarmGroup)."""

    kind = "warm"

    def __init__(self, settings: Settings, job: JobRecord, trainer_redis_url: str) -> None:
        self.settings = settings
        self.job = job
        self.redis_url = trainer_redis_url
        self.run_dir = run_dir_for(settings, job.id)
        self.task: asyncio.Task | None = None
        self.group: Any = None
        self.stopping = False

    def _run(self) -> RunResult:
        from trainer.errors import RectrainError
        from trainer.spec import JobSpec

        spec = JobSpec.model_validate(self.job.spec)
        pool = _WarmState.get_pool(self.settings, spec)
        self.group = pool.group(spec)
        if self.stopping:
            raise RectrainError("cancelled")
        waiting = max(0.0, (self.job.dispatched_at or time.time()) - self.job.created_at)
        return pool.run(
            spec,
            self.run_dir,
            job_id=self.job.id,
            redis_url=self.redis_url,
            waiting_s=waiting,
            dispatched_at=self.job.dispatched_at,
        )

    async def start(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "spec.json").write_text(json.dumps(self.job.spec, indent=1))
        _WarmState.used = True
        self.task = asyncio.create_task(asyncio.to_thread(self._run))
        return {"run_dir": str(self.run_dir)}

    async def poll(self) -> Outcome | None:
        assert self.task is not None
        if not self.task.done():
            return None
        try:
            results = self.task.result()
        except Exception as e:
            from trainer.errors import RectrainError

            if self.stopping:
                return Outcome(ok=False, reason="cancelled")
            reason = e.message if isinstance(e, RectrainError) else f"{type(e).__name__}: {e}"
            return Outcome(ok=False, reason=reason)
        return Outcome(ok=True, results=results)

    async def stop(self, grace_s: float) -> None:
        assert self.task is not None
        if self.task.done():
            return
        self.stopping = True
        if self.group is not None:
            self.group.cancel()  # the workers end; the run's call returns at once
        # the run must be over before this runner's group takes another: wait for it
        with contextlib.suppress(Exception):
            await asyncio.shield(self.task)


def make_backend(settings: Settings, job: JobRecord, trainer_redis_url: str) -> Backend:
    if runs_warm(settings, job):
        return WarmBackend(settings, job, trainer_redis_url)
    kind = job.launcher or settings.effective_launcher
    if kind == "ray":
        return RayJobsBackend(settings, job, trainer_redis_url)
    return LocalBackend(settings, job, trainer_redis_url)


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


# ------------------------------------------------------------------------ runner


_CLAIM_LUA = """
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[2] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) return 1 end
return 0
"""
# what the reaper puts in a dead runner's heartbeat key while an adopting runner starts
ADOPT_PLACEHOLDER = "adopting"


class Heartbeat:
    """The runner's lease on a job: a key with a TTL it keeps refreshing."""

    def __init__(self, r: aioredis.Redis, job_id: str, ttl_s: float, interval_s: float) -> None:
        self.r = r
        self.key = keys.heartbeat_key(job_id)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.ttl_ms = int(ttl_s * 1000)
        self.interval_s = interval_s
        self.lost = asyncio.Event()  # another runner owns it now
        self.lapsed = asyncio.Event()  # it expired while we could not refresh it
        self._refresh = r.register_script(LEASE_REFRESH_LUA)
        self._release = r.register_script(LEASE_RELEASE_LUA)
        self._claim = r.register_script(_CLAIM_LUA)

    async def claim(self, *, adopt: bool = False) -> bool:
        """Take the lease if free, or if the dispatcher (or, adopting, the reaper) reserved it for us."""
        reserved = ADOPT_PLACEHOLDER if adopt else DISPATCHED_PLACEHOLDER
        return bool(await self._claim(keys=[self.key], args=[self.token, reserved, self.ttl_ms]))

    async def run(self) -> None:
        while not self.lost.is_set():
            await asyncio.sleep(self.interval_s)
            try:
                res = await self._refresh(keys=[self.key], args=[self.token, self.ttl_ms])
            except (RedisConnectionError, RedisTimeoutError, OSError):
                continue  # Redis briefly away: keep the trainer going, try again
            if res == 0:
                self.lost.set()
            elif res == 2:
                self.lapsed.set()

    async def release(self) -> None:
        try:
            await self._release(keys=[self.key], args=[self.token])
        except (RedisConnectionError, RedisTimeoutError, OSError):
            pass


async def _retry(fn, *args, **kw):
    """Call a Redis coroutine, retrying while Redis is unreachable (bounded)."""
    deadline = time.monotonic() + _REDIS_RETRY_FOR_S
    delay = 0.1
    while True:
        try:
            return await fn(*args, **kw)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


_runner_log = logging.getLogger("rectrain.runner")


def _log(job_id: str, msg: str) -> None:
    _runner_log.info("%s", msg, extra={"job_id": job_id})


async def run_job(settings: Settings, job_id: str, *, adopt: bool = False) -> int:
    """Own one job from claim to terminal status (the runner process's main)."""
    assert settings.redis_url, "the runner needs REDIS_URL"
    r = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        rc = await _run_job(settings, settings.redis_url, r, job_id, adopt)
        # a study run on a warm worker group: the group stays and takes the study's next
        # run while that is fair (next_warm_job), one queue slot for all of them
        while _WarmState.used:
            _WarmState.used = False
            nxt = await _retry(next_warm_job, JobStore(r), job_id, settings)
            if nxt is None:
                break
            _log(nxt, f"on the warm worker group of study run {job_id}")
            job_id = nxt
            rc = await _run_job(settings, settings.redis_url, r, job_id, False)
        return rc
    finally:
        await asyncio.to_thread(_WarmState.close)
        await r.aclose()


async def next_warm_job(store: JobStore, prev_id: str, settings: Settings) -> str | None:
    """The job a warm worker group takes after ``prev_id`` (a study run it has just
    finished), claimed (queued -> starting) as the dispatcher claims; None when the
    group should end and give its queue slot back.

    It takes the head of its owner's queue (priority, then first come: the owner's own
    order), and only when it is a run of the same study with the same resource shape,
    and no other owner has a job queued: then the dispatcher gives the freed slot to
    that owner, whose job so waits at most for one run of the study."""
    prev = await store.get(prev_id)
    if prev is None or "study" not in prev.labels:
        return None
    for owner in await store.queue_owners():
        if owner != prev.owner and await store.owner_queue_length(owner):
            return None
    if settings.max_running_per_owner:
        running = await store.owner_count_in_status(prev.owner, JobStatus.RUNNING)
        starting = await store.owner_count_in_status(prev.owner, JobStatus.STARTING)
        if running + starting >= settings.max_running_per_owner:
            return None
    head = await store.owner_queue_head(prev.owner)
    if not head:
        return None
    nxt = await store.get(head[0])
    if (
        nxt is None
        or nxt.status != JobStatus.QUEUED
        or nxt.labels.get("study") != prev.labels["study"]
        or (nxt.spec.get("scaling") or {}) != (prev.spec.get("scaling") or {})
    ):
        return None
    if not await store.claim(nxt.id, placeholder_ttl_s=keys.QUEUED_RELAUNCH_AFTER_S):
        return None
    return nxt.id


async def _run_job(settings: Settings, redis_url: str, r: aioredis.Redis, job_id: str, adopt: bool) -> int:
    store = JobStore(r)
    hb = Heartbeat(r, job_id, settings.heartbeat_ttl_s, settings.heartbeat_interval_s)
    if not await _retry(hb.claim, adopt=adopt):
        _log(job_id, "another runner holds this job; exiting")
        return 0
    hb_task = asyncio.create_task(hb.run())
    backend: Backend | None = None
    try:
        job = await _retry(store.get, job_id)
        if job is None:
            _log(job_id, "job no longer exists")
            return 0
        trainer_redis_url = settings.trainer_redis_url or redis_url
        if adopt:
            if not (job.status.is_active and job.launcher == "ray" and job.ray_submission_id):
                _log(job_id, f"nothing to adopt (status {job.status.value})")
                return 0
            backend = make_backend(settings, job, trainer_redis_url)
            _log(job_id, f"re-attached to Ray job {job.ray_submission_id}")
        else:
            mine = {
                "launcher": settings.effective_launcher,
                "runner_host": socket.gethostname(),
                "runner_pid": os.getpid(),
            }
            if job.status == JobStatus.STARTING and not job.runner_pid:
                # the dispatcher claimed it (services.queue) and handed it to us
                await _retry(store.set_fields, job_id, **mine)
            else:
                try:
                    await _retry(
                        store.transition, job_id, JobStatus.STARTING, expect={JobStatus.QUEUED}, **mine
                    )
                except IllegalTransition as e:
                    _log(job_id, f"not starting: {e}")
                    return 0
            job = await _retry(store.get, job_id)
            assert job is not None
            if job.cancel_requested:  # cancelled between the dispatcher's claim and now
                with contextlib.suppress(IllegalTransition):
                    await _retry(
                        store.transition, job_id, JobStatus.CANCELLED, error="cancelled before it started"
                    )
                _log(job_id, "cancelled before it started")
                return 0
            try:
                backend = make_backend(settings, job, trainer_redis_url)
                info = await backend.start()
            except Exception as e:
                _log(job_id, f"could not start the trainer: {e!r}")
                await _retry(
                    store.transition, job_id, JobStatus.FAILED, error=f"could not start the trainer: {e}"
                )
                return 1
            await _retry(store.set_fields, job_id, **info)
            try:
                await _retry(store.transition, job_id, JobStatus.RUNNING, expect={JobStatus.STARTING})
            except IllegalTransition as e:
                _log(job_id, f"stopping: {e}")
                await backend.stop(settings.cancel_grace_s)
                return 1
            _log(job_id, f"running ({info})")
        try:
            return await _supervise(settings, redis_url, store, hb, backend, job_id)
        except Exception as e:
            _log(job_id, f"launcher error: {e!r}")
            with contextlib.suppress(Exception):
                await backend.stop(settings.cancel_grace_s)
            with contextlib.suppress(IllegalTransition):
                await _retry(store.transition, job_id, JobStatus.FAILED, error=f"launcher error: {e}")
            return 1
    finally:
        hb_task.cancel()
        await hb.release()


def _replay_run_dir(redis_url: str, job_id: str, run_dir: Path) -> int:
    from services.metrics_bus import replay_events_file
    from services.redis_conn import sync_client

    c = sync_client(redis_url)
    try:
        return replay_events_file(c, job_id, run_dir / EVENTS_FILE)
    finally:
        c.close()


def wall_limit_s(settings: Settings, spec: dict[str, Any]) -> float:
    """The job's wall-clock limit: ``training.max_wall_seconds`` bounded by the service's
    ``max_wall_seconds`` (which applies alone when the spec sets none)."""
    asked = (spec.get("training") or {}).get("max_wall_seconds")
    return float(min(asked, settings.max_wall_seconds) if asked else settings.max_wall_seconds)


async def _supervise(
    settings: Settings, redis_url: str, store: JobStore, hb: Heartbeat, backend: Backend, job_id: str
) -> int:
    cancelled = False
    timed_out: str | None = None
    job = await _retry(store.get, job_id)
    limit_s = wall_limit_s(settings, job.spec if job else {})
    # from the job's start (an adopting runner keeps the original clock)
    started = (job.started_at if job and job.started_at else time.time()) if job else time.time()
    while True:
        outcome = await backend.poll()
        if outcome is not None:
            break
        if hb.lost.is_set():
            _log(job_id, "lost the heartbeat to another runner; stopping the trainer")
            await backend.stop(settings.cancel_grace_s)
            return 1
        try:
            job = await store.get(job_id)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await asyncio.sleep(_POLL_S)  # Redis briefly away; the trainer buffers its events
            continue
        if job is None:
            _log(job_id, "the job record is gone; stopping the trainer")
            await backend.stop(settings.cancel_grace_s)
            return 1
        if job.status.is_terminal:
            # the reaper gave up on us (heartbeat lapsed during an outage): honour it
            _log(job_id, f"job was marked {job.status.value} meanwhile; stopping the trainer")
            await backend.stop(settings.cancel_grace_s)
            return 1
        if job.cancel_requested:
            _log(job_id, "cancel requested; stopping the trainer")
            cancelled = True
            await backend.stop(settings.cancel_grace_s)
            outcome = await backend.poll()
            break
        if time.time() - started > limit_s:
            timed_out = (
                f"wall-clock limit: the job ran longer than {limit_s:g} s "
                "(training.max_wall_seconds, bounded by RECTRAIN_MAX_WALL_SECONDS); cancelled"
            )
            _log(job_id, timed_out)
            cancelled = True
            # stop() kills the process group after the grace period: never waits forever
            await backend.stop(settings.cancel_grace_s)
            outcome = await backend.poll()
            break
        await asyncio.sleep(_POLL_S)

    if isinstance(backend, (LocalBackend, WarmBackend)):
        # events the trainer's sink could not write (Redis away, buffer overflow, close
        # timeout) are in its events.jsonl: replay what the stream lacks, de-duplicated
        try:
            n = await _retry(asyncio.to_thread, _replay_run_dir, redis_url, job_id, backend.run_dir)
            if n:
                _log(job_id, f"replayed {n} events from events.jsonl")
        except Exception as e:
            _log(job_id, f"could not replay events.jsonl: {e!r}")
    try:
        if cancelled:
            await _retry(
                store.transition, job_id, JobStatus.CANCELLED, error=timed_out or "cancelled on request"
            )
            _log(job_id, "cancelled")
            return 0
        assert outcome is not None
        if outcome.ok:
            if outcome.results:
                await _retry(store.record_progress, job_id, progress_from_results(outcome.results))
            await _retry(store.transition, job_id, JobStatus.SUCCEEDED)
            _log(job_id, "succeeded")
            return 0
        job = await _retry(store.get, job_id)
        if job is not None and job.cancel_requested:
            await _retry(store.transition, job_id, JobStatus.CANCELLED, error="cancelled on request")
            return 0
        # the trainer's own reason as the error; the log tail apart (services/failure.py)
        error, error_log = await store.split_failure(job_id, outcome.reason)
        await _retry(store.transition, job_id, JobStatus.FAILED, error=error, error_log=error_log)
        _log(job_id, f"failed: {outcome.reason}")
        return 1
    except IllegalTransition as e:
        _log(job_id, f"could not record the outcome: {e}")
        return 1
