"""The queue on a real Redis: atomic claims, fair order, priorities, per-owner limits,
capacity arithmetic and the messages that name the numbers."""

from __future__ import annotations

import asyncio
import time

import pytest
from svc_helpers import open_store, run

from services import keys
from services.capacity import GIB, Capacity, Demand, Usage, job_demand, never_fits, wait_reason
from services.jobs import DISPATCHED_PLACEHOLDER, JobStatus, QueueFull
from services.launcher import JobLauncher
from services.queue import Dispatcher, queue_info
from trainer.spec import JobSpec

SPEC = {"training": {"num_passes": 1}}


class RecordingLauncher(JobLauncher):
    """Records which jobs the dispatcher hands over instead of starting runner processes
    (the order is pure logic; runners are exercised by tests/api/test_api_queue.py)."""

    def __init__(self, settings) -> None:
        super().__init__(settings, settings.redis_url)
        self.launched: list[str] = []

    def launch(self, job_id: str, *, adopt: bool = False):
        self.launched.append(job_id)


def _settings(settings, **kw):
    return settings.model_copy(
        update={
            "capacity_cpus": 1,
            "capacity_gpus": 0,
            "capacity_memory_gb": 64,
            "reserve_memory_gb": 0,
            **kw,
        }
    )


def _demand(settings, **scaling) -> dict:
    return job_demand(JobSpec.model_validate({**SPEC, "scaling": scaling}), settings).to_dict()


def test_messages_name_the_field_and_the_numbers():
    cap = Capacity(cpus=2, gpus=0, memory_bytes=8 * GIB, node_cpus=2, node_gpus=0, source="ray at x")
    d = Demand(workers=64, cpus_per_worker=1, gpus_per_worker=0, worker_bytes=GIB, driver_bytes=0)
    assert never_fits(d, cap).startswith("scaling.num_workers: 64 workers x 1 CPU > 2 CPUs in the cluster")
    d = Demand(workers=2, cpus_per_worker=1, gpus_per_worker=1, worker_bytes=GIB, driver_bytes=0)
    assert never_fits(d, cap).startswith("scaling.use_gpu: 2 workers x 1 GPU > 0 GPUs in the cluster")
    d = Demand(workers=2, cpus_per_worker=1, gpus_per_worker=0, worker_bytes=4 * GIB, driver_bytes=GIB // 2)
    msg = never_fits(d, cap)
    assert msg.startswith(
        "scaling.num_workers: 2 workers x 4 GiB (embeddings + Ray overhead) + 0.5 GiB driver"
    )
    assert "= 8.5 GiB > 8 GiB of memory in the cluster" in msg
    d = Demand(workers=1, cpus_per_worker=1, gpus_per_worker=0, worker_bytes=GIB, driver_bytes=0)
    assert never_fits(d, cap) is None
    assert wait_reason(d, cap.free(Usage(cpus=2))) == "waiting for 1 CPU; 0 free"
    assert wait_reason(d, cap.free(Usage(cpus=1, memory_bytes=int(7.5 * GIB)))) == (
        "waiting for 1 GiB of memory; 0.5 GiB free"
    )


def test_demand_counts_embeddings_and_ray_overhead(settings):
    s = settings.model_copy(update={"worker_overhead_gb": 0.75, "driver_overhead_gb": 0.5})
    spec = JobSpec.model_validate({"scaling": {"num_workers": 2, "cpus_per_worker": 1.5}})
    d = job_demand(spec, s)
    assert d.cpus == 3 and d.gpus == 0
    assert d.memory_bytes == 2 * (spec.embedding_bytes_per_worker() + int(0.75 * GIB)) + int(0.5 * GIB)


def test_claim_is_atomic_across_connections(settings):
    async def go():
        async with open_store(settings.redis_url) as a, open_store(settings.redis_url) as b:
            ids = [(await a.create(owner="alice", spec=SPEC, num_passes=1)).id for _ in range(12)]
            won = await asyncio.gather(*[s.claim(i, placeholder_ttl_s=30) for i in ids for s in (a, b, a, b)])
            per_job = [sum(won[k * 4 : k * 4 + 4]) for k in range(len(ids))]
            jobs = [await a.get(i) for i in ids]
            hb = [await a.r.get(keys.heartbeat_key(i)) for i in ids]
            return per_job, jobs, hb, await a.r.zcard(keys.queue_owner_key("alice"))

    per_job, jobs, hb, left = run(go())
    assert per_job == [1] * 12
    assert all(j.status == JobStatus.STARTING and j.dispatched_at for j in jobs)
    assert hb == [DISPATCHED_PLACEHOLDER] * 12 and left == 0


def test_round_robin_fifo_priority_and_per_owner_limits(settings):
    s = _settings(settings)
    launcher = RecordingLauncher(s)

    async def go():
        async with open_store(s.redis_url) as store:
            d = _demand(s)

            async def sub(owner, priority=0):
                return (
                    await store.create(owner=owner, spec=SPEC, num_passes=1, demand=d, priority=priority)
                ).id

            a1, a2 = await sub("alice"), await sub("alice")
            a3 = await sub("alice", priority=5)
            b1, b2 = await sub("bob"), await sub("bob")
            disp = Dispatcher(store, launcher)
            assert await disp.tick() == [a3]  # 1 CPU: one at a time; alice < bob on a tie
            info = await queue_info(store, [b1, a1, b2, a2])
            assert [info[j].position for j in (b1, a1, b2, a2)] == [1, 2, 3, 4]
            assert info[b1].reason == "waiting for 1 CPU; 0 free"
            assert info[a2].reason == "waiting for its turn: 3 jobs ahead"
            order = [a3]
            for _ in range(4):
                await store.transition(order[-1], JobStatus.RUNNING)
                await store.transition(order[-1], JobStatus.SUCCEEDED)
                order += await disp.tick()
            assert order == [a3, b1, a1, b2, a2]
            assert await queue_info(store, order) == {}
            await store.request_cancel(a2)  # flags it; a2 still holds its CPU

            # per-owner running limit: alice waits at 1 running while bob goes ahead
            s2 = _settings(s, capacity_cpus=3, max_running_per_owner=1)
            disp2 = Dispatcher(store, RecordingLauncher(s2))
            assert await disp2.tick() == []  # the first dispatcher holds the lease
            await disp.release()
            c1, c2, c3 = await sub("alice"), await sub("alice"), await sub("bob")
            assert await disp2.tick() == [c3]  # alice has a2 starting: at her limit
            info = await queue_info(store, [c1, c2])
            assert info[c1].reason == "owner alice has 1 of 1 jobs running (RECTRAIN_MAX_RUNNING_PER_OWNER)"
            await store.transition(a2, JobStatus.CANCELLED)
            assert await disp2.tick() == [c1]
            assert (await queue_info(store, [c2]))[c2].position == 1

            assert await disp.lead() is False and await disp2.lead() is True

    run(go())


def test_queue_limit_and_cancel_of_a_queued_job(settings):
    async def go():
        async with open_store(settings.redis_url) as store:
            ids = [
                (await store.create(owner="alice", spec=SPEC, num_passes=1, max_queued=2)).id
                for _ in range(2)
            ]
            with pytest.raises(QueueFull, match="RECTRAIN_MAX_QUEUED_PER_OWNER=2"):
                await store.create(owner="alice", spec=SPEC, num_passes=1, max_queued=2)
            await store.create(owner="bob", spec=SPEC, num_passes=1, max_queued=2)  # per owner
            assert await store.request_cancel(ids[0]) == JobStatus.CANCELLED
            assert await store.r.zrange(keys.queue_owner_key("alice"), 0, -1) == [ids[1]]
            assert not await store.claim(ids[0], placeholder_ttl_s=5)
            await store.create(owner="alice", spec=SPEC, num_passes=1, max_queued=2)  # room again

    run(go())


@pytest.mark.ray
def test_capacity_comes_from_ray(settings, ray_address):
    """Ray's own totals, through its dashboard (Ray Jobs launcher) or its GCS address (local
    launcher on a cluster); the reserve is taken off."""
    import os

    from services.capacity import CapacityReader

    for address, launcher in ((os.environ["RECTRAIN_TEST_RAY_DASHBOARD"], "ray"), (ray_address, "local")):
        s = settings.model_copy(
            update={"ray_address": address, "launcher": launcher, "reserve_cpus": 1, "reserve_memory_gb": 0}
        )
        reader, deadline = CapacityReader(s), time.monotonic() + 90
        while (cap := run(reader.read())) is None and time.monotonic() < deadline:
            time.sleep(1)  # a just-started head reports its node a little later
        assert cap is not None, reader.error
        assert cap.cpus == 3 and cap.node_cpus == 3 and cap.gpus == 0  # the session head: 4 CPUs
        assert cap.memory_bytes > GIB and cap.source == f"ray at {address}"


def test_a_job_cancelled_between_claim_and_runner_never_starts(settings):
    """A real runner for a dispatched job whose cancel came first: cancelled, no trainer."""

    async def claim_and_cancel():
        async with open_store(settings.redis_url) as store:
            jid = (await store.create(owner="alice", spec=SPEC, num_passes=1)).id
            assert await store.claim(jid, placeholder_ttl_s=30)
            assert await store.request_cancel(jid) == JobStatus.STARTING  # flagged only
            return jid

    jid = run(claim_and_cancel())
    assert JobLauncher(settings, settings.redis_url).launch(jid).wait(60) == 0

    async def get():
        async with open_store(settings.redis_url) as store:
            return await store.get(jid)

    job = run(get())
    assert job.status == JobStatus.CANCELLED and job.error == "cancelled before it started"
    assert job.trainer_pid is None and job.runner_pid
