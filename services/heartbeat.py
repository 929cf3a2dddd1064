"""The runner's lease on its job (:class:`Heartbeat`: a key with a TTL it keeps
refreshing, one runner per job) and :func:`retry_redis`, how the runner rides out a
short Redis outage."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services import keys
from services.jobs import DISPATCHED_PLACEHOLDER
from services.redis_conn import LEASE_REFRESH_LUA, LEASE_RELEASE_LUA

_REDIS_RETRY_FOR_S = 600.0


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


async def retry_redis(fn, *args, **kw):
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
