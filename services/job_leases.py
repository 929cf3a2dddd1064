"""Who holds a job, and who dispatches: the job store's ``leases`` part.

A started job's runner keeps a heartbeat key alive (``keys.heartbeat_key``; the lease
itself is :class:`services.launcher.Heartbeat`); the dispatcher claims a job by putting
:data:`DISPATCHED_PLACEHOLDER` there until its runner takes over, and the reaper, when a
heartbeat is gone, holds it for a relaunch or an adoption (counting its attempts in the
job record). One dispatcher at a time holds the dispatch lease
(``keys.dispatch_leader_key``, kept by Lua scripts registered here). Reach it as
``JobStore.leases``.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from services import keys

# what the dispatcher puts in a claimed job's heartbeat key until its runner takes it
DISPATCHED_PLACEHOLDER = "dispatched"


class JobLeases:
    """Job heartbeats and the dispatch lease, over the job store's Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis

    async def has_heartbeat(self, job_id: str) -> bool:
        return bool(await self.r.exists(keys.heartbeat_key(job_id)))

    async def hold_heartbeat(self, job_id: str, placeholder: str, ttl_ms: int) -> bool:
        """Take the job's heartbeat key for ``placeholder`` if nobody holds it (``SET NX PX``)."""
        return bool(await self.r.set(keys.heartbeat_key(job_id), placeholder, nx=True, px=ttl_ms))

    async def count_attempt(self, job_id: str, field: str) -> int:
        """Add one to a counter field of the job's record; the new count."""
        return await self.r.hincrby(keys.job_key(job_id), field, 1)

    async def redis_uptime_s(self) -> float:
        """Seconds Redis has been up (``INFO server``); very large when it does not say.
        (Just restarted, Redis has lost every heartbeat: the reaper waits.)"""
        info = await self.r.info("server")
        return float(info.get("uptime_in_seconds", 1e9))

    def register_script(self, lua: str) -> AsyncScript:
        return self.r.register_script(lua)

    async def dispatch_leader(self) -> str | None:
        """The token of the dispatcher that holds the lease, if any."""
        return cast("str | None", await self.r.get(keys.dispatch_leader_key()))
