"""The job queue's dispatcher: starts queued jobs in a fair order, within capacity.

Jobs wait in Redis (``keys.queue_owner_key``: one sorted set per owner, higher
``priority`` first, then first come; :meth:`services.jobs.JobStore.create` enqueues).
Every process that runs the control loops (a ``rectrain worker``, or an API process with
``RECTRAIN_CONTROL_LOOPS=in-process``: :mod:`services.worker`) runs :func:`dispatch_loop`
beside the reaper; one of them at a time holds the dispatcher lease
(``keys.dispatch_leader_key``) and, every tick:

1. reads the cluster's capacity (:mod:`services.capacity`) and adds up what the
   starting/running jobs hold;
2. walks the queues round-robin across owners (the owner served least recently
   first, one job per owner per round), FIFO within an owner;
3. starts each job that fits (atomic claim queued -> starting, then the launcher);
   skips owners at ``RECTRAIN_MAX_RUNNING_PER_OWNER``; stops at the first job that
   does not fit, so a big job is never starved by smaller ones behind it;
4. writes every queued job's position and wait reason to ``keys.queue_info_key``.

On an autoscaling cluster (``RECTRAIN_AUTOSCALING_SHAPE``) capacity is the worker groups'
maximum; a job that fits it but not the live nodes is not started: it waits "for the
cluster to scale up" while the dispatcher asks Ray's autoscaler for the bundles of the
active jobs and of this one (:class:`services.capacity.Autoscaler`), and starts once the
nodes are up. With nothing waiting the request shrinks to the active jobs' bundles (none
once they end), so idle workers go away after the autoscaler's idle timeout.

The claim is a WATCH/MULTI transaction on the job and its queue, so even two
dispatchers at once never start one job twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from services import keys
from services.capacity import (
    Autoscaler,
    Capacity,
    CapacityReader,
    Demand,
    Usage,
    _num,
    job_demand,
    wait_reason,
)
from services.jobs import JobStatus, JobStore
from services.launcher import JobLauncher
from services.redis_conn import LEASE_REFRESH_LUA, LEASE_RELEASE_LUA
from trainer.spec import JobSpec

log = logging.getLogger("rectrain.queue")


_DISPATCHERS: weakref.WeakSet = weakref.WeakSet()


def notify_dispatchers() -> None:
    """Wake this process's dispatchers (a job was queued or capacity freed)."""
    for d in list(_DISPATCHERS):
        d.wake.set()


@dataclass
class QueueInfo:
    position: int  # 1 = next to start
    reason: str  # why it waits


async def queue_info(store: JobStore, job_ids: list[str]) -> dict[str, QueueInfo]:
    """Position and wait reason of the given queued jobs (as of the last dispatcher tick)."""
    if not job_ids:
        return {}
    raw = await store.queues.queue_info_raw(job_ids)
    out = {}
    for jid, v in zip(job_ids, raw, strict=False):
        if v:
            d = json.loads(v)
            out[jid] = QueueInfo(position=int(d["position"]), reason=str(d["reason"]))
    return out


async def queue_length(store: JobStore) -> int:
    return await store.queues.queued_count()


class Dispatcher:
    """One API process's dispatcher (see the module docstring)."""

    def __init__(
        self,
        store: JobStore,
        launcher: JobLauncher,
        *,
        on_dispatch: Callable[[str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.launcher = launcher
        self.capacity: CapacityReader = launcher.capacity
        self.settings = launcher.settings
        self.autoscaler = Autoscaler(self.settings) if self.settings.worker_groups else None
        self.on_dispatch = on_dispatch  # (job id, seconds it waited)
        self.wake = asyncio.Event()
        self.token = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._lead = store.leases.register_script(LEASE_REFRESH_LUA)
        self._release = store.leases.register_script(LEASE_RELEASE_LUA)
        _DISPATCHERS.add(self)
        self.lease_ttl_s = max(keys.DISPATCH_LEASE_TTL_S, 3 * self.settings.dispatch_interval_s)

    async def lead(self) -> bool:
        """Take or keep the dispatcher lease; False while another replica holds it."""
        ttl_ms = int(self.lease_ttl_s * 1000)
        return bool(await self._lead(keys=[keys.dispatch_leader_key()], args=[self.token, ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[keys.dispatch_leader_key()], args=[self.token])

    async def _demands(self, ids: list[str]) -> list[tuple[str | None, str | None, Demand | None]]:
        """(status, owner, demand) of each job; the demand rebuilt from the spec if missing."""
        rows = await self.store.queues.job_fields_many(ids, "status", "owner", "demand", "spec")
        out = []
        for status, owner, demand, spec in rows:
            d = None
            if demand:
                d = Demand.from_dict(json.loads(demand))
            elif spec:  # a job queued before demands were recorded
                try:
                    d = job_demand(JobSpec.model_validate(json.loads(spec)), self.settings)
                except ValueError:
                    d = None
            out.append((status, owner, d))
        return out

    async def tick(self) -> list[str]:
        """One pass over the queue; returns the ids of the jobs it started."""
        if not await self.lead():
            return []
        store = self.store
        s = self.settings
        cap: Capacity | None = await self.capacity.read()
        active = [
            i for st in (JobStatus.STARTING, JobStatus.RUNNING) for i in await store.queues.ids_in_status(st)
        ]
        used = Usage()
        running: Counter[str] = Counter()
        held: list[dict[str, float]] = []  # the active jobs' worker bundles
        for _, owner, d in await self._demands(active):
            if d is not None:
                used.add(d)
                held += d.bundles()
            if owner:
                running[owner] += 1
        owners = await store.queues.queue_owners()
        queues = await store.queues.owner_queues(owners)
        queued = [i for o in owners for i in queues[o]]
        info = dict(zip(queued, await self._demands(queued), strict=False))

        free = cap.free(used) if cap is not None else None
        live: Usage | None = None  # autoscaling: what the alive nodes have free now
        live_error: str | None = None
        if self.autoscaler is not None and queued:
            now = await self.capacity.live()
            if now is None:
                live_error = self.capacity.live_error
            else:
                live = Usage(
                    max(0.0, now.cpus - used.cpus),
                    max(0.0, now.gpus - used.gpus),
                    max(0, now.memory_bytes - used.memory_bytes),
                )
        scale_for: list[dict[str, float]] | None = None  # bundles to ask the autoscaler for
        heads = {o: deque(queues[o]) for o in owners}
        to_start: list[tuple[str, str]] = []
        positions: dict[str, dict] = {}
        blocked: str | None = None
        pos = 0
        while any(heads.values()):
            for o in owners:
                if not heads[o]:
                    continue
                jid = heads[o].popleft()
                status, _, d = info[jid]
                if status != JobStatus.QUEUED.value:  # left the queue meanwhile / stale entry
                    if status is None:
                        await store.queues.drop_from_owner_queue(o, jid)
                    continue
                pos += 1
                reason = None
                if s.max_running_per_owner and running[o] >= s.max_running_per_owner:
                    reason = (
                        f"owner {o} has {running[o]} of {s.max_running_per_owner} jobs running "
                        "(RECTRAIN_MAX_RUNNING_PER_OWNER)"
                    )
                elif free is None:
                    reason = f"capacity unknown: {self.capacity.error or 'not read yet'}"
                elif blocked is not None:
                    ahead = pos - 1
                    reason = f"waiting for its turn: {ahead} job{'s' if ahead != 1 else ''} ahead"
                elif d is None:
                    reason = "its spec cannot be read"
                else:
                    why = wait_reason(d, free)
                    if why is None and self.autoscaler is not None:
                        why = await self._scale_reason(d, live, live_error, held)
                        if why is not None and live is not None:
                            scale_for = held + d.bundles()
                    if why is None:
                        to_start.append((jid, o))
                        free.cpus -= d.cpus
                        free.gpus -= d.gpus
                        free.memory_bytes -= d.memory_bytes
                        if live is not None:
                            live.cpus -= d.cpus
                            live.gpus -= d.gpus
                            live.memory_bytes -= d.memory_bytes
                        held += d.bundles()
                        running[o] += 1
                        pos -= 1
                        continue
                    blocked = reason = why
                positions[jid] = {"position": pos, "reason": reason}

        if self.autoscaler is not None and scale_for is None:
            # nothing waits for nodes: ask only for what the active jobs hold (their nodes
            # stay while a just-started job's workers come up); none active: let idle ones go
            await self.autoscaler.request(held)
        started = []
        for jid, _owner in to_start:
            if await self._start(jid):
                started.append(jid)
        left = {j: v for j, v in positions.items() if j not in started}
        await store.queues.set_queue_info({j: json.dumps(v) for j, v in left.items()})
        return started

    async def _scale_reason(
        self, d: Demand, live: Usage | None, live_error: str | None, held: list[dict[str, float]]
    ) -> str | None:
        """Autoscaling: why a job that fits the maximum cannot start on the live nodes yet
        (asking the autoscaler for the active jobs' bundles and its own), or None."""
        assert self.autoscaler is not None
        if live is None:
            return f"waiting for Ray: {live_error or 'the live nodes were not read yet'}"
        short = wait_reason(d, live)
        if short is None:
            return None
        bundle = ", ".join(f"{_num(v)} {k}" for k, v in d.bundles()[0].items())
        ok = await self.autoscaler.request(held + d.bundles())
        asked = (
            f"asked the Ray autoscaler for {d.workers} x {{{bundle}}}"
            if ok
            else f"could not ask the autoscaler: {self.autoscaler.error}"
        )
        return f"waiting for the cluster to scale up: {short.removeprefix('waiting for ')} on the live nodes; {asked}"

    async def _start(self, job_id: str) -> bool:
        if not await self.store.claim(job_id, placeholder_ttl_s=keys.QUEUED_RELAUNCH_AFTER_S):
            return False
        job = await self.store.get(job_id)
        if job is not None and self.on_dispatch is not None:
            self.on_dispatch(job_id, max(0.0, (job.dispatched_at or time.time()) - job.created_at))
        try:
            self.launcher.launch(job_id)
        except OSError as e:
            log.exception("could not start the launcher of job %s", job_id)
            await self.store.transition(job_id, JobStatus.FAILED, error=f"could not start its launcher: {e}")
            return False
        log.info("started job %s", job_id)
        return True


async def dispatch_loop(dispatcher: Dispatcher, interval_s: float) -> None:
    try:
        while True:
            dispatcher.wake.clear()
            try:
                await dispatcher.tick()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away, etc.: try again next tick
                log.warning("dispatcher tick failed: %s: %s", type(e).__name__, e)
            try:
                await asyncio.wait_for(dispatcher.wake.wait(), interval_s)
            except TimeoutError:
                pass
    finally:
        try:
            await asyncio.shield(dispatcher.release())
        except Exception:
            pass
