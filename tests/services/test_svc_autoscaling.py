"""An autoscaling cluster: capacity from the worker groups' maximum, and a queued job that
asks Ray's autoscaler for its workers, scales a worker up from zero, runs, and lets it go.

The end-to-end test runs the real autoscaler (Ray's fake multi-node provider: worker
nodes are local raylets, see tests/autoscaling_cluster.py), the real dispatcher, runner
and trainer."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from svc_helpers import open_store, run

from services.capacity import GIB, CapacityReader, Demand, never_fits
from services.jobs import JobStatus
from services.launcher import JobLauncher
from services.queue import Dispatcher, queue_info
from services.settings import Settings
from services.submit import submit_job
from trainer.errors import CapacityError
from trainer.spec import JobSpec

SHAPE = [{"replicas": 2, "cpus": 1, "memory_gb": 4}, {"replicas": 3, "cpus": 8, "gpus": 1, "memory_gb": 32}]


def test_shape_settings_are_checked_and_give_the_maximum(settings):
    s = settings.model_copy(update={"ray_address": "http://head-svc:8265", "launcher": "ray"})
    s = Settings(**{**s.model_dump(), "autoscaling_shape": json.dumps(SHAPE), "reserve_memory_gb": 0})
    assert s.gcs_address == "head-svc:6379"  # the dashboard URL's host, Ray's GCS port
    assert Settings(**{**s.model_dump(), "ray_gcs_address": "g:1"}).gcs_address == "g:1"
    cap = run(CapacityReader(s).read())  # no Ray is asked: the shape is the capacity
    assert (cap.cpus, cap.gpus, cap.memory_bytes) == (2 + 24, 3, (8 + 96) * GIB)
    assert (cap.node_cpus, cap.node_gpus) == (8, 1) and "RECTRAIN_AUTOSCALING_SHAPE" in cap.source
    # the maximum admits 3 GPU workers, refuses 4 with the numbers
    d = Demand(workers=4, cpus_per_worker=4, gpus_per_worker=1, worker_bytes=GIB, driver_bytes=0)
    assert never_fits(d, cap).startswith("scaling.use_gpu: 4 workers x 1 GPU > 3 GPUs in the cluster")
    assert never_fits(Demand(3, 4, 1, GIB, 0), cap) is None
    assert Demand(2, 4, 1, GIB, 0).bundles() == [{"CPU": 4, "GPU": 1}] * 2
    assert Demand(1, 2, 0, GIB, 0).bundles() == [{"CPU": 2}]
    base = {**s.model_dump(), "ray_gcs_address": None}
    for bad, msg in (
        ('[{"replicas": 2, "cpus": 1}]', "RECTRAIN_AUTOSCALING_SHAPE: 0.memory_gb: Field required"),
        ('[{"replicas": -1, "cpus": 1, "memory_gb": 1}]', "0.replicas: Input should be greater than"),
        ("[]", "RECTRAIN_AUTOSCALING_SHAPE: no worker group"),
        ("{nope", "RECTRAIN_AUTOSCALING_SHAPE: "),
    ):
        with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
            Settings(**{**base, "autoscaling_shape": bad})
    with pytest.raises(ValueError, match="needs RAY_ADDRESS or RECTRAIN_RAY_GCS_ADDRESS"):
        Settings(**{**base, "ray_address": None, "launcher": "local", "autoscaling_shape": json.dumps(SHAPE)})


TINY = {
    # as little work as a real job can be: one pass over 1024 rows, no test day
    "data": {
        "synthetic": {"examples_per_day": 1024, "num_users": 300, "num_ads": 100},
        "batch_size": 256,
        "test_days": [],
    },
    "model": {"hash_size": 1000, "embedding_dim": 8, "dense_arch": [16, 8], "over_arch": [16]},
    "training": {"num_passes": 1},
    "scaling": {"num_workers": 1, "cpus_per_worker": 1, "memory_per_worker_gb": 1},
    "metrics": {"window_size": 1024, "report_every_steps": 5},
}


@pytest.mark.slow
@pytest.mark.ray
def test_a_queued_job_scales_a_worker_up_from_zero_runs_and_the_worker_goes_away(settings, tmp_path):
    from tests.autoscaling_cluster import start_autoscaling_head

    head = start_autoscaling_head({"CPU": 1}, max_workers=2, idle_timeout_s=4, log_dir=tmp_path)
    try:
        s = settings.model_copy(
            update={
                "ray_address": head.address,  # local launcher: the trainer joins this cluster
                "trainer_module": "trainer.cli",
                # shared by the head and the worker node (one machine): the check passes
                "storage_uri": str(tmp_path / "storage"),
                "autoscaling_shape": json.dumps([{"replicas": 2, "cpus": 1, "memory_gb": 4}]),
                "reserve_memory_gb": 0,
                "reserve_cpus": 0,
            }
        )
        launcher = JobLauncher(s, s.redis_url)

        async def go():
            async with open_store(s.redis_url) as store:
                d = Dispatcher(store, launcher)
                # the maximum (2 workers x 1 CPU) refuses 3 workers at submit; 1 is queued
                with pytest.raises(CapacityError, match="3 workers x 1 CPU > 2 CPUs in the cluster"):
                    big = JobSpec.model_validate({**TINY, "scaling": {**TINY["scaling"], "num_workers": 3}})
                    await submit_job(store, launcher, owner="alice", spec=big)
                job = await submit_job(store, launcher, owner="alice", spec=JobSpec.model_validate(TINY))
                assert await d.tick() == []  # no worker alive: it waits and asks the autoscaler
                reason = (await queue_info(store, [job.id]))[job.id].reason
                assert reason.startswith(
                    "waiting for the cluster to scale up: 1 CPU; 0 free on the live nodes"
                )
                assert reason.endswith("asked the Ray autoscaler for 1 x {1 CPU}")
                assert d.autoscaler.requested == [{"CPU": 1}]
                deadline = time.monotonic() + 120
                while not await d.tick():
                    assert time.monotonic() < deadline, f"no worker came up: {head.log_path}"
                    await asyncio.sleep(1)
                assert head.alive_workers() == 1  # scaled up from zero for the job
                assert d.autoscaler.requested == [{"CPU": 1}]  # held while its workers start
                while not (rec := await store.get(job.id)).status.is_terminal:
                    assert time.monotonic() < deadline + 120, f"job still {rec.status}"
                    await asyncio.sleep(1)
                assert rec.status == JobStatus.SUCCEEDED, rec.error
                await d.tick()  # nothing waits or runs: the request is withdrawn
                assert d.autoscaler.requested == []
                while head.alive_workers():
                    assert time.monotonic() < deadline + 180, "the idle worker was never removed"
                    await asyncio.sleep(1)

        run(go())
    finally:
        head.stop()
