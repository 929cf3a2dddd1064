"""The reaper: finds jobs whose launcher died and settles them.

Every process that runs the control loops (:mod:`services.worker`) runs :func:`reap_once`
every ``reaper_interval_s``:

- an active (starting/running) job without a live heartbeat is marked failed with the
  reason (or cancelled, if cancel had been requested) in one transaction that re-checks
  the heartbeat, and its orphaned trainer is stopped; a Ray job is first re-attached
  (a new runner adopts the still-running Ray job), up to ``MAX_ADOPT_ATTEMPTS`` times;
- a job the dispatcher claimed whose runner never took its heartbeat within
  ``keys.QUEUED_RELAUNCH_AFTER_S`` (the API died between claim and launch) gets a runner
  again. Queued jobs are the dispatcher's (:mod:`services.queue`), never the reaper's.
Before declaring a local job lost, the reaper reconciles it from its run directory: a
trainer that finished and wrote ``results.json`` (while its runner died, or Redis was
away) makes the job ``succeeded``, with the events of its ``events.jsonl`` replayed
(de-duplicated) into the stream. Just after Redis (re)started — its uptime below twice
the heartbeat TTL — a missing heartbeat proves nothing (runners are reconnecting, and
the append-only file may have lost the last second): no job is declared lost then.
Several processes may reap at once: every step is atomic or idempotent.
"""

from __future__ import annotations

import asyncio
import logging

from services import keys
from services.backends import stop_orphan
from services.heartbeat import ADOPT_PLACEHOLDER
from services.jobs import DISPATCHED_PLACEHOLDER, IllegalTransition, JobRecord, JobStatus, JobStore
from services.launch_env import run_dir_for
from services.launcher import JobLauncher
from services.metrics_bus import progress_from_results, replay_events_file
from services.redis_conn import sync_client
from trainer.lifecycle import read_results
from trainer.results import EVENTS_FILE

log = logging.getLogger("rectrain.reaper")

MAX_ADOPT_ATTEMPTS = 3


async def reap_once(store: JobStore, launcher: JobLauncher) -> dict[str, str]:
    """One sweep; returns {job_id: what was done}."""
    done: dict[str, str] = {}
    settings = launcher.settings
    launcher.collect()
    just_restarted = await store.leases.redis_uptime_s() < 2 * settings.heartbeat_ttl_s
    for status in (JobStatus.STARTING, JobStatus.RUNNING):
        for job_id in await store.queues.ids_in_status(status):
            if await store.leases.has_heartbeat(job_id):
                continue
            job = await store.get(job_id)
            if job is None or not job.status.is_active:
                continue
            if job.status == JobStatus.STARTING and not job.runner_pid and not job.cancel_requested:
                attempts = await store.leases.count_attempt(job_id, "dispatch_attempts")
                if attempts <= MAX_ADOPT_ATTEMPTS:
                    ttl_ms = int(keys.QUEUED_RELAUNCH_AFTER_S * 1000)
                    if await store.leases.hold_heartbeat(job_id, DISPATCHED_PLACEHOLDER, ttl_ms):
                        launcher.launch(job_id)
                        done[job_id] = "relaunch"
                    continue
            if job.launcher == "ray" and job.ray_submission_id and not job.cancel_requested:
                attempts = await store.leases.count_attempt(job_id, "adopt_attempts")
                if attempts <= MAX_ADOPT_ATTEMPTS:
                    # reserve the lease for the adopting runner so the next sweep leaves it be
                    ttl_ms = int(settings.heartbeat_ttl_s * 1000) * 3
                    if await store.leases.hold_heartbeat(job_id, ADOPT_PLACEHOLDER, ttl_ms):
                        launcher.launch(job_id, adopt=True)
                        done[job_id] = "adopt"
                    continue
            if await reconcile_from_run_dir(store, launcher, job):
                done[job_id] = JobStatus.SUCCEEDED.value
                continue
            if just_restarted:
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


async def reconcile_from_run_dir(store: JobStore, launcher: JobLauncher, job: JobRecord) -> bool:
    """A local job whose trainer wrote ``results.json``: replay its events, record its
    results and mark it succeeded. False when there is nothing to reconcile from."""
    if job.launcher == "ray":
        return False  # its run directory is on the cluster's head
    run_dir = run_dir_for(launcher.settings, job.id)
    results = read_results(str(run_dir))
    if results is None:
        return False

    def replay() -> int:
        c = sync_client(launcher.redis_url)
        try:
            return replay_events_file(c, job.id, run_dir / EVENTS_FILE)
        finally:
            c.close()

    added = await asyncio.to_thread(replay)
    await store.events.record_progress(job.id, progress_from_results(results))
    try:
        await store.transition(job.id, JobStatus.SUCCEEDED, expect={JobStatus.STARTING, JobStatus.RUNNING})
    except IllegalTransition:
        return False
    log.warning(
        "job %s: launcher lost, but its trainer finished (results.json): succeeded, %d events replayed",
        job.id,
        added,
    )
    return True


async def reaper_loop(store: JobStore, launcher: JobLauncher, interval_s: float) -> None:
    while True:
        try:
            await reap_once(store, launcher)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # Redis away, etc.: try again next tick
            log.warning("reaper sweep failed: %s: %s", type(e).__name__, e)
        await asyncio.sleep(interval_s)
