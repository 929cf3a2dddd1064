"""The reaper: finds jobs whose launcher died and settles them.

Every API process runs :func:`reap_once` every ``reaper_interval_s``:

- an active (starting/running) job without a live heartbeat is marked failed with the
  reason (or cancelled, if cancel had been requested) in one transaction that re-checks
  the heartbeat, and its orphaned trainer is stopped; a Ray job is first re-attached
  (a new runner adopts the still-running Ray job), up to ``MAX_ADOPT_ATTEMPTS`` times;
- a job the dispatcher claimed whose runner never took its heartbeat within
  ``keys.QUEUED_RELAUNCH_AFTER_S`` (the API died between claim and launch) gets a runner
  again. Queued jobs are the dispatcher's (:mod:`services.queue`), never the reaper's.
Several API processes may reap at once: every step is atomic or idempotent.
"""

from __future__ import annotations

import asyncio
import logging

from services import keys
from services.jobs import DISPATCHED_PLACEHOLDER, JobStatus, JobStore
from services.launcher import ADOPT_PLACEHOLDER, JobLauncher, stop_orphan

log = logging.getLogger("rectrain.reaper")

MAX_ADOPT_ATTEMPTS = 3


async def reap_once(store: JobStore, launcher: JobLauncher) -> dict[str, str]:
    """One sweep; returns {job_id: what was done}."""
    done: dict[str, str] = {}
    settings = launcher.settings
    launcher.collect()
    for status in (JobStatus.STARTING, JobStatus.RUNNING):
        for job_id in await store.ids_in_status(status):
            if await store.r.exists(keys.heartbeat_key(job_id)):
                continue
            job = await store.get(job_id)
            if job is None or not job.status.is_active:
                continue
            if job.status == JobStatus.STARTING and not job.runner_pid and not job.cancel_requested:
                attempts = await store.r.hincrby(keys.job_key(job_id), "dispatch_attempts", 1)
                if attempts <= MAX_ADOPT_ATTEMPTS:
                    ttl_ms = int(keys.QUEUED_RELAUNCH_AFTER_S * 1000)
                    if await store.r.set(
                        keys.heartbeat_key(job_id), DISPATCHED_PLACEHOLDER, nx=True, px=ttl_ms
                    ):
                        launcher.launch(job_id)
                        done[job_id] = "relaunch"
                    continue
            if job.launcher == "ray" and job.ray_submission_id and not job.cancel_requested:
                attempts = await store.r.hincrby(keys.job_key(job_id), "adopt_attempts", 1)
                if attempts <= MAX_ADOPT_ATTEMPTS:
                    # reserve the lease for the adopting runner so the next sweep leaves it be
                    ttl_ms = int(settings.heartbeat_ttl_s * 1000) * 3
                    if await store.r.set(keys.heartbeat_key(job_id), ADOPT_PLACEHOLDER, nx=True, px=ttl_ms):
                        launcher.launch(job_id, adopt=True)
                        done[job_id] = "adopt"
                    continue
            where = f"{job.runner_host}:{job.runner_pid}" if job.runner_pid else "unknown"
            reason = (
                f"launcher lost: no heartbeat for {settings.heartbeat_ttl_s:g} s "
                f"(runner {where} died or cannot reach Redis)"
            )
            new = await store.reap_if_heartbeat_lost(job_id, reason)
            if new is not None:
                what = await asyncio.to_thread(stop_orphan, job, settings)
                log.warning("job %s marked %s: %s%s", job_id, new.value, reason, f"; {what}" if what else "")
                done[job_id] = new.value
    return done


async def reaper_loop(store: JobStore, launcher: JobLauncher, interval_s: float) -> None:
    while True:
        try:
            await reap_once(store, launcher)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # Redis away, etc.: try again next tick
            log.warning("reaper sweep failed: %s: %s", type(e).__name__, e)
        await asyncio.sleep(interval_s)
