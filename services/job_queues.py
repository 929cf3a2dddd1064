"""The job store's index and queue lookups: the store's ``queues`` part.

Jobs are indexed by status (all owners, and per owner) and, while queued, wait in their
owner's queue (``keys.queue_owner_key``) with the owners in turn order
(``keys.queue_owners_key``); the dispatcher keeps its last word on each queued job in
the queue info hash, and a new job wakes the dispatchers on a pub/sub channel.
:class:`JobQueues` answers what the dispatcher
(:mod:`services.queue`), the warm groups' ``next_warm_job``, the reaper and the health
gauges ask of these. The writes that move a job between them are the status changes of
:class:`services.jobs.JobStore`. Reach it as ``JobStore.queues``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from services import keys
from services.job_record import JobStatus
from services.redis_conn import redis_fields, text_list


class JobQueues:
    """Status indexes, owners' queues and the queue info, over the job store's Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis

    # status indexes

    async def count_by_status(self) -> dict[JobStatus, int]:
        async with self.r.pipeline(transaction=False) as pipe:
            for s in JobStatus:
                pipe.zcard(keys.status_index_key(s.value))
            counts = await pipe.execute()
        return dict(zip(JobStatus, counts, strict=False))

    async def ids_in_status(self, status: JobStatus) -> list[str]:
        return text_list(await self.r.zrange(keys.status_index_key(status.value), 0, -1))

    async def queued_count(self) -> int:
        return await self.r.zcard(keys.status_index_key(JobStatus.QUEUED.value))

    async def owner_count_in_status(self, owner: str, status: JobStatus) -> int:
        return await self.r.zcard(keys.owner_status_key(owner, status.value))

    async def job_fields_many(self, job_ids: list[str], *fields: str) -> list[list[str | None]]:
        """``HMGET`` of the same fields of several jobs (one pipeline, no transaction)."""
        async with self.r.pipeline(transaction=False) as pipe:
            for i in job_ids:
                pipe.hmget(keys.job_key(i), *fields)
            return await pipe.execute()

    # owners' queues

    async def queue_owners(self) -> list[str]:
        """Owners with a queue, in their turn order."""
        return text_list(await self.r.zrange(keys.queue_owners_key(), 0, -1))

    async def owner_queues(self, owners: list[str]) -> dict[str, list[str]]:
        """Each owner's queued job ids in queue order (one pipeline)."""
        async with self.r.pipeline(transaction=False) as pipe:
            for o in owners:
                pipe.zrange(keys.queue_owner_key(o), 0, -1)
            return dict(zip(owners, await pipe.execute(), strict=False))

    async def owner_queue_head(self, owner: str) -> list[str]:
        """The owner's next queued job id (a list of one, or empty)."""
        return text_list(await self.r.zrange(keys.queue_owner_key(owner), 0, 0))

    async def owner_queue_length(self, owner: str) -> int:
        return await self.r.zcard(keys.queue_owner_key(owner))

    async def drop_from_owner_queue(self, owner: str, job_id: str) -> None:
        """Remove a stale entry from the owner's queue."""
        await self.r.zrem(keys.queue_owner_key(owner), job_id)

    # the dispatcher's queue info

    async def queue_info_raw(self, job_ids: list[str]) -> list[str | None]:
        """The dispatcher's last word (JSON) on each of the given queued jobs."""
        return cast(list[str | None], await self.r.hmget(keys.queue_info_key(), job_ids))

    async def set_queue_info(self, info: Mapping[str, str]) -> None:
        """Replace the queue info with ``info`` (job id -> JSON), in one transaction."""
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(keys.queue_info_key())
            if info:
                pipe.hset(keys.queue_info_key(), mapping=redis_fields(info))
            await pipe.execute()

    # the dispatchers' wake-up channel (keys.dispatch_wake_channel)

    async def wake_dispatchers(self, job_id: str) -> None:
        """Publish on the wake channel: every process's dispatchers look at the queue now."""
        await self.r.publish(keys.dispatch_wake_channel(), job_id)

    def pubsub(self) -> PubSub:
        """A pub/sub connection (subscribe messages not delivered), to listen on the wake channel."""
        return self.r.pubsub(ignore_subscribe_messages=True)
