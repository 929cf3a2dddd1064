"""Shared reads for live event streams (SSE): one blocking reader per job, many subscribers.

Each SSE stream used to hold a pooled Redis connection in a blocking ``XREAD`` for as
long as it was open, so a few hundred streams on one job exhausted the pool and took
every other request down with them. Now a job's subscribers share one watcher task that
blocks on ``XREAD`` (on the stream pool), keeps the entries it read in a short buffer
and wakes the subscribers, which take what follows their cursor from that buffer: one
Redis read per new batch, however many subscribers. A subscriber behind the buffer (a
resumed or slow client) reads its page with a non-blocking ``XRANGE`` on the main pool.

The hub also counts open streams, per owner and in total, so the API can refuse a new
stream with 429 beyond ``RECTRAIN_SSE_MAX_STREAMS_PER_OWNER`` / ``RECTRAIN_SSE_MAX_STREAMS``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from services import keys
from services.metrics_bus import decode_entry

log = logging.getLogger("rectrain.streams")

_RETRY_S = 0.5
_RECENT_MAX = 2000  # entries a watcher keeps for its subscribers (trimmed by half)


def _id_tuple(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms or 0), int(seq or 0)


@dataclass
class _Watch:
    last_id: str
    base_id: str = ""  # the buffer holds every entry after this id (up to last_id)
    ids: list[tuple[int, int]] = field(default_factory=list)
    recent: list[tuple[str, dict]] = field(default_factory=list)
    refs: int = 0
    waiters: set[asyncio.Future] = field(default_factory=set)
    error: Exception | None = None
    task: asyncio.Task | None = None


class StreamLimit(Exception):
    """Too many open streams (for this owner or in total)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StreamSlot:
    """One admitted stream; :meth:`release` is idempotent."""

    def __init__(self, hub: "StreamHub", owner: str) -> None:
        self.hub, self.owner, self._open = hub, owner, True

    def release(self) -> None:
        if self._open:
            self._open = False
            self.hub._release(self.owner)


class StreamHub:
    """Open-stream accounting and one shared blocking reader per streamed job.

    Args:
        r: the client whose (blocking) pool the watchers use; a watcher holds one
            connection while a job has subscribers.
        block_ms: how long one ``XREAD`` blocks (a subscriber's wait is shorter or equal).
        max_streams / max_per_owner: admission limits (429 beyond them).
    """

    def __init__(self, r, block_ms: int, max_streams: int, max_per_owner: int) -> None:
        self.r = r
        self.block_ms = block_ms
        self.max_streams = max_streams
        self.max_per_owner = max_per_owner
        self.total = 0
        self.by_owner: Counter[str] = Counter()
        self._watches: dict[str, _Watch] = {}

    # ------------------------------------------------------------------ admission

    def acquire(self, owner: str) -> StreamSlot:
        if self.by_owner[owner] >= self.max_per_owner:
            raise StreamLimit(
                f"too many open event streams for this owner ({self.max_per_owner}, "
                "RECTRAIN_SSE_MAX_STREAMS_PER_OWNER); close one or poll GET /v1/jobs/{id}/metrics instead"
            )
        if self.total >= self.max_streams:
            raise StreamLimit(
                f"too many open event streams on this server ({self.max_streams}, "
                "RECTRAIN_SSE_MAX_STREAMS); retry later or poll GET /v1/jobs/{id}/metrics instead"
            )
        self.total += 1
        self.by_owner[owner] += 1
        return StreamSlot(self, owner)

    def _release(self, owner: str) -> None:
        self.total -= 1
        self.by_owner[owner] -= 1
        if self.by_owner[owner] <= 0:
            del self.by_owner[owner]

    # ------------------------------------------------------------------ shared reads

    async def wait(self, job_id: str, cursor: str, timeout_s: float) -> None:
        """Return when the job's stream has entries after ``cursor`` (or after
        ``timeout_s``). Raises the watcher's Redis error if it cannot read."""
        w = self._watches.get(job_id)
        if w is None:
            w = self._watches[job_id] = _Watch(last_id=cursor or "0-0", base_id=cursor or "0-0")
            w.task = asyncio.create_task(self._watch(job_id, w), name=f"rectrain-watch-{job_id}")
        w.refs += 1
        try:
            if w.error is not None:
                raise w.error
            if _id_tuple(w.last_id) > _id_tuple(cursor or "0-0"):
                return  # the watcher has already seen newer entries
            fut = asyncio.get_running_loop().create_future()
            w.waiters.add(fut)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fut, timeout_s)
            finally:
                w.waiters.discard(fut)
            if w.error is not None:
                raise w.error
        finally:
            w.refs -= 1

    def since(self, job_id: str, cursor: str) -> list[tuple[str, dict]] | None:
        """The entries after ``cursor`` from the job's watcher buffer, or None when the
        buffer does not reach back to ``cursor`` (read them from Redis then)."""
        w = self._watches.get(job_id)
        if w is None or w.error is not None:
            return None
        c = _id_tuple(cursor or "0-0")
        if c < _id_tuple(w.base_id):
            return None
        return w.recent[bisect.bisect_right(w.ids, c) :]

    @staticmethod
    def _wake(w: _Watch) -> None:
        for fut in list(w.waiters):
            if not fut.done():
                fut.set_result(None)

    async def _watch(self, job_id: str, w: _Watch) -> None:
        stream = keys.events_stream_key(job_id)
        idle_rounds = 0
        try:
            while idle_rounds < 2:  # a round without subscribers ends the watcher
                idle_rounds = idle_rounds + 1 if w.refs == 0 else 0
                try:
                    res = await self.r.xread({stream: w.last_id}, count=1000, block=self.block_ms)
                except RedisError as e:
                    w.error = e
                    self._wake(w)
                    await asyncio.sleep(_RETRY_S)
                    continue
                w.error = None
                for _stream, entries in res or []:
                    if entries:
                        w.last_id = entries[-1][0]
                        w.recent.extend((eid, decode_entry(f)) for eid, f in entries)
                        w.ids.extend(_id_tuple(eid) for eid, _ in entries)
                        if len(w.recent) > _RECENT_MAX:
                            cut = len(w.recent) - _RECENT_MAX // 2
                            w.base_id = w.recent[cut - 1][0]
                            del w.recent[:cut], w.ids[:cut]
                if res:
                    self._wake(w)
        finally:
            if self._watches.get(job_id) is w:
                del self._watches[job_id]
            self._wake(w)

    async def close(self) -> None:
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
