"""The runner process's work (``python -m services.runner``): own one job from claim
to terminal status.

1. claims the job's heartbeat key (services/heartbeat.py) — one runner per job;
2. moves it queued -> starting, starts the trainer through a backend
   (:func:`make_backend`: services/backends.py, services/warm_backend.py), -> running;
3. refreshes the heartbeat, watches the trainer, the job's cancel flag and its
   wall-clock limit;
4. on exit records the result and moves it to succeeded / failed (with the reason) /
   cancelled.

A runner whose job ran on a warm worker group goes on with the study's next run
(:func:`services.warm_backend.next_warm_job`) while that is fair.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.backends import POLL_S, Backend, LocalBackend, RayJobsBackend
from services.heartbeat import Heartbeat, retry_redis
from services.jobs import IllegalTransition, JobRecord, JobStatus, JobStore
from services.metrics_bus import progress_from_results
from services.settings import Settings
from services.warm_backend import WarmBackend, WarmState, next_warm_job, runs_warm
from trainer.results import EVENTS_FILE

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
        while WarmState.used:
            WarmState.used = False
            nxt = await retry_redis(next_warm_job, JobStore(r), job_id, settings)
            if nxt is None:
                break
            _log(nxt, f"on the warm worker group of study run {job_id}")
            job_id = nxt
            rc = await _run_job(settings, settings.redis_url, r, job_id, False)
        return rc
    finally:
        await asyncio.to_thread(WarmState.close)
        await r.aclose()


def make_backend(settings: Settings, job: JobRecord, trainer_redis_url: str) -> Backend:
    if runs_warm(settings, job):
        return WarmBackend(settings, job, trainer_redis_url)
    kind = job.launcher or settings.effective_launcher
    if kind == "ray":
        return RayJobsBackend(settings, job, trainer_redis_url)
    return LocalBackend(settings, job, trainer_redis_url)


async def _run_job(settings: Settings, redis_url: str, r: aioredis.Redis, job_id: str, adopt: bool) -> int:
    store = JobStore(r)
    hb = Heartbeat(r, job_id, settings.heartbeat_ttl_s, settings.heartbeat_interval_s)
    if not await retry_redis(hb.claim, adopt=adopt):
        _log(job_id, "another runner holds this job; exiting")
        return 0
    hb_task = asyncio.create_task(hb.run())
    backend: Backend | None = None
    try:
        job = await retry_redis(store.get, job_id)
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
                await retry_redis(store.set_fields, job_id, **mine)
            else:
                try:
                    await retry_redis(
                        store.transition, job_id, JobStatus.STARTING, expect={JobStatus.QUEUED}, **mine
                    )
                except IllegalTransition as e:
                    _log(job_id, f"not starting: {e}")
                    return 0
            job = await retry_redis(store.get, job_id)
            assert job is not None
            if job.cancel_requested:  # cancelled between the dispatcher's claim and now
                with contextlib.suppress(IllegalTransition):
                    await retry_redis(
                        store.transition, job_id, JobStatus.CANCELLED, error="cancelled before it started"
                    )
                _log(job_id, "cancelled before it started")
                return 0
            try:
                backend = make_backend(settings, job, trainer_redis_url)
                info = await backend.start()
            except Exception as e:
                _log(job_id, f"could not start the trainer: {e!r}")
                await retry_redis(
                    store.transition, job_id, JobStatus.FAILED, error=f"could not start the trainer: {e}"
                )
                return 1
            await retry_redis(store.set_fields, job_id, **info)
            try:
                await retry_redis(store.transition, job_id, JobStatus.RUNNING, expect={JobStatus.STARTING})
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
                await retry_redis(store.transition, job_id, JobStatus.FAILED, error=f"launcher error: {e}")
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
    job = await retry_redis(store.get, job_id)
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
            await asyncio.sleep(POLL_S)  # Redis briefly away; the trainer buffers its events
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
        await asyncio.sleep(POLL_S)

    if isinstance(backend, (LocalBackend, WarmBackend)):
        # events the trainer's sink could not write (Redis away, buffer overflow, close
        # timeout) are in its events.jsonl: replay what the stream lacks, de-duplicated
        try:
            n = await retry_redis(asyncio.to_thread, _replay_run_dir, redis_url, job_id, backend.run_dir)
            if n:
                _log(job_id, f"replayed {n} events from events.jsonl")
        except Exception as e:
            _log(job_id, f"could not replay events.jsonl: {e!r}")
    try:
        if cancelled:
            await retry_redis(
                store.transition, job_id, JobStatus.CANCELLED, error=timed_out or "cancelled on request"
            )
            _log(job_id, "cancelled")
            return 0
        assert outcome is not None
        if outcome.ok:
            if outcome.results:
                await retry_redis(
                    store.events.record_progress, job_id, progress_from_results(outcome.results)
                )
            await retry_redis(store.transition, job_id, JobStatus.SUCCEEDED)
            _log(job_id, "succeeded")
            return 0
        job = await retry_redis(store.get, job_id)
        if job is not None and job.cancel_requested:
            await retry_redis(store.transition, job_id, JobStatus.CANCELLED, error="cancelled on request")
            return 0
        # the trainer's own reason as the error; the log tail apart (services/failure.py)
        error, error_log = await store.events.split_failure(job_id, outcome.reason)
        await retry_redis(store.transition, job_id, JobStatus.FAILED, error=error, error_log=error_log)
        _log(job_id, f"failed: {outcome.reason}")
        return 1
    except IllegalTransition as e:
        _log(job_id, f"could not record the outcome: {e}")
        return 1
