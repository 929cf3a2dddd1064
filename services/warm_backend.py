"""Study runs on warm worker groups (trainer/warm.py): :class:`WarmBackend`, whether a
job runs on one (:func:`runs_warm`), the Ray its driver joins, and which job a group
takes after a run (:func:`next_warm_job`).

A runner process keeps its warm worker groups (one per resource shape) from one study
run to the next (:class:`WarmState`); :func:`services.job_runner.run_job` asks
:func:`next_warm_job` for the next run while that is fair to other owners.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from typing import Any

from services import keys
from services.backends import Outcome
from services.jobs import JobRecord, JobStatus, JobStore
from services.launch_env import run_dir_for
from services.settings import Settings
from trainer.results import RunResult

_log = logging.getLogger("rectrain.runner")
# beyond the cancel grace, how long stop() waits for a cancelled warm run's thread
_STOP_WAIT_S = 30.0


class WarmState:
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
        # set by stop(): the run's thread gives up at its next look (WarmGroup.run's
        # ``cancel``), wherever it is — joining Ray, waiting for the group's resources,
        # starting the group or training — and ends the group's workers itself
        self.cancel = threading.Event()

    def _run(self) -> RunResult:
        from trainer.spec import JobSpec

        spec = JobSpec.model_validate(self.job.spec)
        pool = WarmState.get_pool(self.settings, spec)  # a cancel meanwhile: pool.run raises it
        waiting = max(0.0, (self.job.dispatched_at or time.time()) - self.job.created_at)
        return pool.run(
            spec,
            self.run_dir,
            job_id=self.job.id,
            redis_url=self.redis_url,
            waiting_s=waiting,
            dispatched_at=self.job.dispatched_at,
            cancel=self.cancel,
        )

    async def start(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "spec.json").write_text(json.dumps(self.job.spec, indent=1))
        WarmState.used = True
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

            if self.cancel.is_set():
                return Outcome(ok=False, reason="cancelled")
            reason = e.message if isinstance(e, RectrainError) else f"{type(e).__name__}: {e}"
            return Outcome(ok=False, reason=reason)
        return Outcome(ok=True, results=results)

    async def stop(self, grace_s: float) -> None:
        assert self.task is not None
        if self.task.done():
            return
        self.cancel.set()  # the run's thread ends the workers within WarmGroup's poll
        # the run must be over before this runner's group takes another: wait for it, but
        # not for ever (a thread still joining Ray cannot give up): then this runner takes
        # no further run, and the job is cancelled all the same
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout=grace_s + _STOP_WAIT_S)
        except TimeoutError:
            WarmState.used = False
            _log.warning(
                "the warm run did not end within %g s of its cancel; this runner takes no further run",
                grace_s + _STOP_WAIT_S,
                extra={"job_id": self.job.id},
            )
        except Exception:
            pass  # the run's own error: poll() reports it


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
    for owner in await store.queues.queue_owners():
        if owner != prev.owner and await store.queues.owner_queue_length(owner):
            return None
    if settings.max_running_per_owner:
        running = await store.queues.owner_count_in_status(prev.owner, JobStatus.RUNNING)
        starting = await store.queues.owner_count_in_status(prev.owner, JobStatus.STARTING)
        if running + starting >= settings.max_running_per_owner:
            return None
    head = await store.queues.owner_queue_head(prev.owner)
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
