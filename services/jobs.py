"""The job store: job records in Redis and their status machine.

A job is a Redis hash (``keys.job_key``) plus index sorted sets by owner and status.
Every status change is one WATCH/MULTI transaction that checks the current status
against :data:`TRANSITIONS`, moves the id between index sets, stamps timestamps and
appends a ``status`` event to the job's metrics stream, so SSE readers see status
changes in order with the metrics. Illegal transitions raise :class:`IllegalTransition`.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline, PubSub
from redis.commands.core import AsyncScript

from services import keys
from services.failure import split_failure
from services.metrics_bus import read_events, read_events_raw, stream_fields
from services.redis_conn import redis_fields, text, text_hash, text_list, transaction
from trainer.errors import RectrainError
from trainer.report import summarize_passes


class JobStatus(str, Enum):
    QUEUED = "queued"  # accepted; waiting in the queue for capacity (services.queue)
    STARTING = "starting"  # the dispatcher claimed it; its launcher is starting the trainer
    RUNNING = "running"  # the trainer process / Ray job is running
    SUCCEEDED = "succeeded"  # the trainer exited 0 (results recorded)
    FAILED = "failed"  # the trainer or its launcher failed; ``error`` says why
    CANCELLED = "cancelled"  # stopped on request

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_active(self) -> bool:
        """Has (or should have) a live launcher heartbeat."""
        return self in (JobStatus.STARTING, JobStatus.RUNNING)

    def can_become(self, other: "JobStatus") -> bool:
        return other in TRANSITIONS[self]


_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.STARTING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.STARTING: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class JobNotFound(RectrainError):
    """No job with this id (or not visible to this owner)."""


class IllegalTransition(RectrainError):
    """The job's current status does not allow the requested change."""

    def __init__(self, message: str, current: "JobStatus | None" = None) -> None:
        super().__init__(message)
        self.current = current


class QueueFull(RectrainError):
    """The owner already has the most queued jobs allowed (RECTRAIN_MAX_QUEUED_PER_OWNER)."""


# what the dispatcher puts in a claimed job's heartbeat key until its runner takes it
DISPATCHED_PLACEHOLDER = "dispatched"


def new_job_id() -> str:
    return secrets.token_hex(8)


# fields of the job hash that hold JSON; the rest are strings ("" = unset)
_JSON_FIELDS = ("labels", "spec", "demand")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "dispatched_at")
_INT_FIELDS = ("num_passes", "runner_pid", "trainer_pid", "priority")


@dataclass
class JobRecord:
    """A job as stored in Redis."""

    id: str
    owner: str
    status: JobStatus
    spec: dict[str, Any]
    created_at: float
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    num_passes: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    error_log: str | None = None  # a failed trainer's log tail (ANSI removed); error is its reason
    cancel_requested: bool = False
    launcher: str | None = None
    runner_host: str | None = None
    runner_pid: int | None = None
    trainer_pid: int | None = None
    ray_submission_id: str | None = None
    run_dir: str | None = None
    priority: int = 0  # higher first within its owner's queue
    demand: dict[str, Any] | None = None  # services.capacity.Demand as a dict
    dispatched_at: float | None = None  # when the dispatcher claimed it

    @classmethod
    def from_hash(cls, h: Mapping[str, str]) -> "JobRecord":
        kw: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            v = h.get(name)
            if v is None or v == "":
                continue
            if name in _JSON_FIELDS:
                kw[name] = json.loads(v)
            elif name in _FLOAT_FIELDS:
                kw[name] = float(v)
            elif name in _INT_FIELDS:
                kw[name] = int(v)
            elif name == "status":
                kw[name] = JobStatus(v)
            elif name == "cancel_requested":
                kw[name] = v == "1"
            else:
                kw[name] = v
        return cls(**kw)


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in fields.items():
        if k not in JobRecord.__dataclass_fields__:
            raise KeyError(f"unknown job field {k!r}")
        if v is None:
            out[k] = ""
        elif k in _JSON_FIELDS:
            out[k] = json.dumps(v)
        elif isinstance(v, bool):
            out[k] = "1" if v else "0"
        elif isinstance(v, Enum):
            out[k] = v.value
        else:
            out[k] = str(v)
    return out


def status_event(status: JobStatus, previous: JobStatus | None, error: str | None, ts: float) -> dict:
    """The stream event a transition appends (``step``/``pass`` -1: not a training event)."""
    ev: dict[str, Any] = {"type": "status", "status": status.value, "step": -1, "pass": -1, "ts": ts}
    if previous is not None:
        ev["previous"] = previous.value
    if error:
        ev["error"] = error
    return ev


def summarize_progress(progress: Mapping[str, str]) -> dict[str, Any]:
    """The job summary from its progress hash: per-pass table, the pass selected by
    validation NE and its test NE (the same rule as the trainer's results.json, see
    :func:`trainer.report.summarize_passes`), oracle NE, throughput."""
    passes = []
    for k, v in progress.items():
        if k.startswith("pass:"):
            try:
                passes.append(json.loads(v))
            except ValueError:
                continue
    passes.sort(key=lambda p: p.get("pass", 0))
    out = summarize_passes(passes)
    eps = progress.get("last_examples_per_s")
    if eps:  # the latest train window is fresher than the last finished pass
        out["last_examples_per_s"] = float(eps)
    wall = progress.get("wall_split")
    if wall:  # a finished run's wall split (results.json)
        with contextlib.suppress(ValueError):
            out["wall_split"] = json.loads(wall)
    return out


async def _read_head(pipe: Pipeline, key: str, *more: str) -> tuple[JobStatus | None, str, float, list[str]]:
    """A job's status (None: no such job), owner, creation time and the ``more`` fields
    ("" when unset), read through ``pipe`` (under WATCH in a transaction's check)."""
    vals = await pipe.hmget(key, "status", "owner", "created_at", *more)
    status, owner, created, *rest = ("" if v is None else text(v) for v in vals)
    if not status:
        return None, "", 0.0, rest
    return JobStatus(status), owner, float(created), rest


class JobStore:
    """Async job store over one Redis connection pool."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis

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
            self._queue_create(pipe, job, mapping, keys.queue_score(priority, seq))
            return job

        return await transaction(self.r, check, queue)

    def _queue_create(self, pipe: Pipeline, job: JobRecord, mapping: Mapping[str, str], score: float) -> None:
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

    async def summary(self, job_id: str) -> dict[str, Any]:
        return summarize_progress(text_hash(await self.r.hgetall(keys.progress_key(job_id))))

    async def summaries(self, job_ids: builtins.list[str]) -> builtins.list[dict[str, Any]]:
        async with self.r.pipeline(transaction=False) as pipe:
            for i in job_ids:
                pipe.hgetall(keys.progress_key(i))
            return [summarize_progress(p) for p in await pipe.execute()]

    async def count_by_status(self) -> dict[JobStatus, int]:
        async with self.r.pipeline(transaction=False) as pipe:
            for s in JobStatus:
                pipe.zcard(keys.status_index_key(s.value))
            counts = await pipe.execute()
        return dict(zip(JobStatus, counts, strict=False))

    async def ids_in_status(self, status: JobStatus) -> builtins.list[str]:
        return text_list(await self.r.zrange(keys.status_index_key(status.value), 0, -1))

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

    def _queue_transition(
        self,
        pipe: Pipeline,
        job_id: str,
        owner: str,
        created: float,
        cur: JobStatus,
        to: JobStatus,
        fields: dict[str, Any],
        now: float,
    ) -> None:
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
            self._queue_transition(pipe, job_id, owner, created, cur, to, fields, time.time())
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
            self._queue_transition(
                pipe,
                job_id,
                owner,
                created,
                JobStatus.QUEUED,
                JobStatus.STARTING,
                {"dispatched_at": now},
                now,
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
            self._queue_transition(
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
            self._queue_transition(pipe, job_id, owner, created, cur, to, {"error": error}, time.time())
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

    # ------------------------------------------------------------------ for the callers outside
    # What the routes, the dispatcher, the reaper and the runners need of Redis, so that
    # none of them reaches the raw client (``self.r``): each is the same command(s) they
    # sent themselves.

    async def ping(self) -> bool:
        return await self.r.ping()

    async def redis_uptime_s(self) -> float:
        """Seconds Redis has been up (``INFO server``); very large when it does not say."""
        info = await self.r.info("server")
        return float(info.get("uptime_in_seconds", 1e9))

    async def put_stream_ticket(self, ticket: str, value: str, ttl_s: int) -> None:
        await self.r.set(keys.stream_ticket_key(ticket), value, ex=ttl_s)

    async def stream_ticket(self, ticket: str) -> str:
        """What :meth:`put_stream_ticket` stored under ``ticket`` ("" when none or expired)."""
        return text(await self.r.get(keys.stream_ticket_key(ticket)) or "")

    async def events(self, job_id: str, after: str | None, limit: int) -> builtins.list[tuple[str, dict]]:
        """A job's events after stream id ``after`` (:func:`services.metrics_bus.read_events`)."""
        return await read_events(self.r, job_id, after, limit)

    async def events_raw(self, job_id: str, after: str | None, limit: int) -> builtins.list[tuple[str, str]]:
        """Like :meth:`events`, each as its stored JSON text."""
        return await read_events_raw(self.r, job_id, after, limit)

    async def record_progress(self, job_id: str, mapping: Mapping[str, str]) -> None:
        """Write per-pass progress fields (``HSET`` of the job's progress hash)."""
        await self.r.hset(keys.progress_key(job_id), mapping=redis_fields(mapping))

    async def split_failure(self, job_id: str, raw: str | None) -> tuple[str, str | None]:
        """``(error, error_log)`` of a failed job (:func:`services.failure.split_failure`)."""
        return await split_failure(self.r, job_id, raw)

    async def has_heartbeat(self, job_id: str) -> bool:
        return bool(await self.r.exists(keys.heartbeat_key(job_id)))

    async def hold_heartbeat(self, job_id: str, placeholder: str, ttl_ms: int) -> bool:
        """Take the job's heartbeat key for ``placeholder`` if nobody holds it (``SET NX PX``)."""
        return bool(await self.r.set(keys.heartbeat_key(job_id), placeholder, nx=True, px=ttl_ms))

    async def count_attempt(self, job_id: str, field: str) -> int:
        """Add one to a counter field of the job's record; the new count."""
        return await self.r.hincrby(keys.job_key(job_id), field, 1)

    def pubsub(self) -> PubSub:
        """A pub/sub connection (subscribe messages not delivered)."""
        return self.r.pubsub(ignore_subscribe_messages=True)

    def register_script(self, lua: str) -> AsyncScript:
        return self.r.register_script(lua)

    async def dispatch_leader(self) -> str | None:
        """The token of the dispatcher that holds the lease, if any."""
        return cast("str | None", await self.r.get(keys.dispatch_leader_key()))

    # queue (services.queue's dispatcher, the warm groups' next_warm_job)

    async def queued_count(self) -> int:
        return await self.r.zcard(keys.status_index_key(JobStatus.QUEUED.value))

    async def queue_info_raw(self, job_ids: builtins.list[str]) -> builtins.list[str | None]:
        """The dispatcher's last word (JSON) on each of the given queued jobs."""
        return cast(builtins.list[str | None], await self.r.hmget(keys.queue_info_key(), job_ids))

    async def set_queue_info(self, info: Mapping[str, str]) -> None:
        """Replace the queue info with ``info`` (job id -> JSON), in one transaction."""
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(keys.queue_info_key())
            if info:
                pipe.hset(keys.queue_info_key(), mapping=redis_fields(info))
            await pipe.execute()

    async def queue_owners(self) -> builtins.list[str]:
        """Owners with a queue, in their turn order."""
        return text_list(await self.r.zrange(keys.queue_owners_key(), 0, -1))

    async def owner_queues(self, owners: builtins.list[str]) -> dict[str, builtins.list[str]]:
        """Each owner's queued job ids in queue order (one pipeline)."""
        async with self.r.pipeline(transaction=False) as pipe:
            for o in owners:
                pipe.zrange(keys.queue_owner_key(o), 0, -1)
            return dict(zip(owners, await pipe.execute(), strict=False))

    async def owner_queue_head(self, owner: str) -> builtins.list[str]:
        """The owner's next queued job id (a list of one, or empty)."""
        return text_list(await self.r.zrange(keys.queue_owner_key(owner), 0, 0))

    async def owner_queue_length(self, owner: str) -> int:
        return await self.r.zcard(keys.queue_owner_key(owner))

    async def owner_count_in_status(self, owner: str, status: JobStatus) -> int:
        return await self.r.zcard(keys.owner_status_key(owner, status.value))

    async def drop_from_owner_queue(self, owner: str, job_id: str) -> None:
        """Remove a stale entry from the owner's queue."""
        await self.r.zrem(keys.queue_owner_key(owner), job_id)

    async def job_fields_many(
        self, job_ids: builtins.list[str], *fields: str
    ) -> builtins.list[builtins.list[str | None]]:
        """``HMGET`` of the same fields of several jobs (one pipeline, no transaction)."""
        async with self.r.pipeline(transaction=False) as pipe:
            for i in job_ids:
                pipe.hmget(keys.job_key(i), *fields)
            return await pipe.execute()
