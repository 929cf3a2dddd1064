"""The job store: job records in Redis and their status machine.

A job is a Redis hash (``keys.job_key``) plus index sorted sets by owner and status.
Every status change is one WATCH/MULTI transaction that checks the current status
against :data:`services.job_record.TRANSITIONS`, moves the id between index sets,
stamps timestamps and appends a ``status`` event to the job's metrics stream, so SSE
readers see status changes in order with the metrics. Illegal transitions raise
:class:`IllegalTransition`.

:class:`JobStore` holds the record and its changes; its parts, over the same Redis:

- ``store.events`` (:mod:`services.job_events`): the job's event stream, progress and summary;
- ``store.queues`` (:mod:`services.job_queues`): status indexes, owners' queues, queue info;
- ``store.leases`` (:mod:`services.job_leases`): heartbeats and the dispatch lease.

What a job is (status, record, errors) lives in :mod:`services.job_record`; its names
are imported here and may be imported from here.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from services import keys
from services.job_events import JobEvents
from services.job_leases import DISPATCHED_PLACEHOLDER, JobLeases
from services.job_queues import JobQueues
from services.job_record import (  # also imported from here by the store's callers
    IllegalTransition,
    JobNotFound,
    JobRecord,
    JobStatus,
    QueueFull,
    encode_fields,
    new_job_id,
    status_event,
)
from services.metrics_bus import stream_fields
from services.redis_conn import redis_fields, text, text_hash, transaction
from services.study_record import StudyTracking


async def _read_head(pipe: Pipeline, key: str, *more: str) -> tuple[JobStatus | None, str, float, list[str]]:
    """A job's status (None: no such job), owner, creation time and the ``more`` fields
    ("" when unset), read through ``pipe`` (under WATCH in a transaction's check)."""
    vals = await pipe.hmget(key, "status", "owner", "created_at", *more)
    status, owner, created, *rest = ("" if v is None else text(v) for v in vals)
    if not status:
        return None, "", 0.0, rest
    return JobStatus(status), owner, float(created), rest


def _record_new(pipe: Pipeline, job: JobRecord, mapping: Mapping[str, str], score: float) -> None:
    """Queue the writes that record a new (queued) job: its hash, its index entries, its first
    status event and its place in its owner's queue."""
    owner = job.owner
    pipe.hset(keys.job_key(job.id), mapping=redis_fields(mapping))
    pipe.zadd(keys.jobs_index_key(), {job.id: job.created_at})
    pipe.zadd(keys.owner_jobs_key(owner), {job.id: job.created_at})
    pipe.zadd(keys.status_index_key(job.status.value), {job.id: job.created_at})
    pipe.zadd(keys.owner_status_key(owner, job.status.value), {job.id: job.created_at})
    pipe.xadd(
        keys.events_stream_key(job.id),
        redis_fields(stream_fields(status_event(job.status, None, None, job.created_at))),
        maxlen=keys.METRICS_STREAM_MAXLEN,
        approximate=True,
    )
    pipe.zadd(keys.queue_owner_key(owner), {job.id: score})
    pipe.zadd(keys.queue_owners_key(), {owner: 0}, nx=True)


def _record_transition(
    pipe: Pipeline,
    job_id: str,
    owner: str,
    created: float,
    cur: JobStatus,
    to: JobStatus,
    fields: dict[str, Any],
    now: float,
) -> None:
    """Queue the writes of a status change ``cur`` -> ``to`` (checked by the caller, under
    WATCH): the record's fields and timestamps, the index entries, the queue when it leaves
    it, and the ``status`` event on the job's stream."""
    fields = dict(fields)
    if to == JobStatus.STARTING and "started_at" not in fields:
        fields["started_at"] = now
    if to.is_terminal and "finished_at" not in fields:
        fields["finished_at"] = now
    pipe.hset(keys.job_key(job_id), mapping=redis_fields({"status": to.value, **encode_fields(fields)}))
    if cur == JobStatus.QUEUED:  # leaves the queue, whatever it becomes
        pipe.zrem(keys.queue_owner_key(owner), job_id)
        pipe.hdel(keys.queue_info_key(), job_id)
    pipe.zrem(keys.status_index_key(cur.value), job_id)
    pipe.zrem(keys.owner_status_key(owner, cur.value), job_id)
    pipe.zadd(keys.status_index_key(to.value), {job_id: created})
    pipe.zadd(keys.owner_status_key(owner, to.value), {job_id: created})
    pipe.xadd(
        keys.events_stream_key(job_id),
        redis_fields(stream_fields(status_event(to, cur, fields.get("error"), now))),
        maxlen=keys.METRICS_STREAM_MAXLEN,
        approximate=True,
    )


class JobStore:
    """Async job store over one Redis connection pool."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis
        self.events = JobEvents(redis)
        self.queues = JobQueues(redis)
        self.leases = JobLeases(redis)
        self.study_tracking = StudyTracking(redis)  # a study run's MLflow parent (admission)

    # ------------------------------------------------------------------ create / read

    async def create(
        self,
        *,
        owner: str,
        spec: dict[str, Any],
        num_passes: int,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        launcher: str | None = None,
        priority: int = 0,
        demand: dict[str, Any] | None = None,
        max_queued: int | None = None,
    ) -> JobRecord:
        """Record a new job and put it in its owner's queue, in one transaction.

        Raises :class:`QueueFull` when the owner already has ``max_queued`` queued jobs.
        """
        seq = await self.r.incr(keys.queue_seq_key())
        job = JobRecord(
            id=new_job_id(),
            owner=owner,
            status=JobStatus.QUEUED,
            spec=spec,
            created_at=time.time(),
            name=name,
            labels=labels or {},
            num_passes=num_passes,
            launcher=launcher,
            priority=priority,
            demand=demand,
        )
        mapping = encode_fields({k: getattr(job, k) for k in JobRecord.__dataclass_fields__})
        queue = keys.queue_owner_key(owner)

        async def check(pipe: Pipeline) -> JobRecord:
            queued = await pipe.zcard(queue)
            if max_queued is not None and queued >= max_queued:
                raise QueueFull(
                    f"owner {owner!r} already has {queued} queued jobs, the most allowed "
                    f"(RECTRAIN_MAX_QUEUED_PER_OWNER={max_queued}); wait for some to start"
                )
            pipe.multi()
            _record_new(pipe, job, mapping, keys.queue_score(priority, seq))
            return job

        return await transaction(self.r, check, queue)

    async def get(self, job_id: str) -> JobRecord | None:
        if not keys.is_job_id(job_id):
            return None
        h = await self.r.hgetall(keys.job_key(job_id))
        return JobRecord.from_hash(text_hash(h)) if h else None

    async def get_for_owner(self, job_id: str, owner: str) -> JobRecord:
        """The job if it exists and belongs to ``owner``; else :class:`JobNotFound`."""
        job = await self.get(job_id)
        if job is None or job.owner != owner:
            raise JobNotFound("Job not found")
        return job

    async def list(
        self, owner: str, status: JobStatus | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[builtins.list[JobRecord], int]:
        """An owner's jobs, newest first, and how many match in all."""
        index = keys.owner_status_key(owner, status.value) if status else keys.owner_jobs_key(owner)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.zcard(index)
            pipe.zrevrange(index, offset, offset + limit - 1)
            count, ids = await pipe.execute()
        if not ids:
            return [], count
        async with self.r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hgetall(keys.job_key(i))
            hashes = await pipe.execute()
        return [JobRecord.from_hash(text_hash(h)) for h in hashes if h], count

    async def ping(self) -> bool:
        """Redis answers (the API's readiness)."""
        return await self.r.ping()

    # ------------------------------------------------------------------ changes

    async def set_fields(self, job_id: str, **fields: Any) -> None:
        """Set non-status fields (launcher bookkeeping) of an existing job."""
        if "status" in fields:
            raise KeyError("use transition() to change status")
        key = keys.job_key(job_id)

        async def check(pipe: Pipeline) -> None:
            if not await pipe.exists(key):
                raise JobNotFound("Job not found")
            pipe.multi()
            pipe.hset(key, mapping=redis_fields(encode_fields(fields)))

        await transaction(self.r, check, key)

    async def transition(
        self, job_id: str, to: JobStatus, *, expect: set[JobStatus] | None = None, **fields: Any
    ) -> JobStatus:
        """Atomically move a job to ``to``; returns the status it left.

        Raises :class:`JobNotFound`, or :class:`IllegalTransition` when the current status
        cannot become ``to`` (or is not in ``expect``).
        """
        key = keys.job_key(job_id)

        async def check(pipe: Pipeline) -> JobStatus:
            cur, owner, created, _ = await _read_head(pipe, key)
            if cur is None:
                raise JobNotFound("Job not found")
            if not cur.can_become(to) or (expect is not None and cur not in expect):
                raise IllegalTransition(f"job {job_id} is {cur.value}; cannot become {to.value}", cur)
            pipe.multi()
            _record_transition(pipe, job_id, owner, created, cur, to, fields, time.time())
            return cur

        return await transaction(self.r, check, key)

    async def claim(self, job_id: str, *, placeholder_ttl_s: float) -> bool:
        """The dispatcher's atomic claim: queued -> starting, out of its owner's queue.

        True for exactly one caller however many API replicas try at once (the job and
        its queue are WATCHed). The job's heartbeat key gets a placeholder that its
        runner takes over, so the reaper leaves the job alone while the runner starts.
        """
        key = keys.job_key(job_id)
        turn = await self.r.incr(keys.queue_turn_key())

        async def check(pipe: Pipeline) -> bool:
            cur, owner, created, _ = await _read_head(pipe, key)
            if cur != JobStatus.QUEUED:
                await pipe.unwatch()
                return False
            queue = keys.queue_owner_key(owner)
            await pipe.watch(queue)
            if await pipe.zscore(queue, job_id) is None:
                await pipe.unwatch()
                return False
            now = time.time()
            pipe.multi()
            _record_transition(
                pipe, job_id, owner, created, cur, JobStatus.STARTING, {"dispatched_at": now}, now
            )
            pipe.set(keys.heartbeat_key(job_id), DISPATCHED_PLACEHOLDER, px=int(placeholder_ttl_s * 1000))
            pipe.zadd(keys.queue_owners_key(), {owner: turn})
            return True

        return await transaction(self.r, check, key)

    async def request_cancel(self, job_id: str) -> JobStatus:
        """Cancel a job: queued ones at once, active ones by flagging their launcher.

        Returns the status after the call; raises :class:`IllegalTransition` if it is finished.
        """
        key = keys.job_key(job_id)

        async def check(pipe: Pipeline) -> JobStatus:
            cur, owner, created, _ = await _read_head(pipe, key)
            if cur is None:
                raise JobNotFound("Job not found")
            if cur.is_terminal:
                raise IllegalTransition(f"Job already {cur.value}", cur)
            pipe.multi()
            if cur != JobStatus.QUEUED:
                pipe.hset(key, mapping=redis_fields(encode_fields({"cancel_requested": True})))
                return cur
            _record_transition(
                pipe,
                job_id,
                owner,
                created,
                cur,
                JobStatus.CANCELLED,
                {"error": "cancelled before it started", "cancel_requested": True},
                time.time(),
            )
            return JobStatus.CANCELLED

        return await transaction(self.r, check, key)

    async def reap_if_heartbeat_lost(self, job_id: str, reason: str) -> JobStatus | None:
        """Fail (or, if cancel was requested, cancel) an active job whose launcher
        heartbeat has expired. Atomic against a heartbeat refresh. Returns the new status."""
        key, hb = keys.job_key(job_id), keys.heartbeat_key(job_id)

        async def check(pipe: Pipeline) -> JobStatus | None:
            if await pipe.exists(hb):
                await pipe.unwatch()
                return None
            cur, owner, created, (cancel,) = await _read_head(pipe, key, "cancel_requested")
            if cur is None or not cur.is_active:
                await pipe.unwatch()
                return None
            to = JobStatus.CANCELLED if cancel == "1" else JobStatus.FAILED
            error = reason if to == JobStatus.FAILED else f"cancelled; {reason}"
            pipe.multi()
            _record_transition(pipe, job_id, owner, created, cur, to, {"error": error}, time.time())
            return to

        return await transaction(self.r, check, key, hb)

    async def delete(self, job_id: str) -> None:
        """Remove a finished job: its record, stream, progress and index entries."""
        key = keys.job_key(job_id)

        async def check(pipe: Pipeline) -> None:
            cur, owner, _, _ = await _read_head(pipe, key)
            if cur is None:
                raise JobNotFound("Job not found")
            if not cur.is_terminal:
                raise IllegalTransition(f"Job is {cur.value}; cancel it first", cur)
            pipe.multi()
            pipe.delete(
                key,
                keys.events_stream_key(job_id),
                keys.progress_key(job_id),
                keys.heartbeat_key(job_id),
                keys.event_keys_key(job_id),
            )
            pipe.zrem(keys.jobs_index_key(), job_id)
            pipe.zrem(keys.owner_jobs_key(owner), job_id)
            pipe.zrem(keys.status_index_key(cur.value), job_id)
            pipe.zrem(keys.owner_status_key(owner, cur.value), job_id)

        await transaction(self.r, check, key)
