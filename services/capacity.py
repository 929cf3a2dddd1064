"""What a job needs and what the cluster has: the numbers the queue schedules by.

A job needs ``num_workers x (cpus_per_worker CPUs, 1 GPU if use_gpu)`` and memory:
per worker the spec's embedding estimate (CPU jobs; a GPU job's tables live in GPU
memory) plus Ray's per-worker overhead
(``RECTRAIN_WORKER_OVERHEAD_GB``), plus its driver (``RECTRAIN_DRIVER_OVERHEAD_GB``).

The cluster has what Ray reports for its alive nodes (CPU, GPU and ``memory``
resources), or this machine's cores and memory when jobs run as local subprocesses;
``RECTRAIN_CAPACITY_*`` override either.

An autoscaling cluster (``RECTRAIN_AUTOSCALING_SHAPE``, rendered by the Helm chart from
its worker groups) has what its worker groups hold at their maximum (max replicas x
resources per pod), whatever runs now: admission refuses only what the maximum can never
hold. The dispatcher then also reads the live nodes (:meth:`CapacityReader.live`); a job
that fits the maximum but not the live nodes waits ("waiting for the cluster to scale
up") while :class:`Autoscaler` asks Ray's autoscaler for its workers' bundles, so a
cluster scaled down to zero workers scales up again instead of waiting forever.
The scheduler never hands out ``RECTRAIN_RESERVE_CPUS`` / ``RECTRAIN_RESERVE_MEMORY_GB``:
that is the service's own room on a single box.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from services.settings import Settings, WorkerGroupShape
from trainer.spec import JobSpec

log = logging.getLogger("rectrain.capacity")

GIB = 1 << 30
_CACHE_S = 5.0  # Ray's totals change only when nodes come and go


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}".rstrip("0").rstrip(".") + " GiB"


def _num(x: float) -> str:
    return f"{x:g}"


def _plural(n: float, word: str) -> str:
    return f"{_num(n)} {word}" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class Demand:
    """What one job holds while it runs."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    worker_bytes: int  # embeddings estimate + Ray overhead, per worker
    driver_bytes: int

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker

    @property
    def memory_bytes(self) -> int:
        return self.workers * self.worker_bytes + self.driver_bytes

    def bundles(self) -> list[dict[str, float]]:
        """One Ray resource bundle per worker, as Ray Train asks for them (CPU, GPU)."""
        b = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            b["GPU"] = self.gpus_per_worker
        return [dict(b) for _ in range(self.workers)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Demand":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def job_demand(spec: JobSpec, settings: Settings) -> Demand:
    s = spec.scaling
    return Demand(
        workers=s.num_workers,
        cpus_per_worker=s.cpus_per_worker,
        gpus_per_worker=1.0 if s.use_gpu else 0.0,
        # GPU jobs keep their tables in GPU memory (scaling.gpu_memory_gb, checked by the
        # spec): the host holds none of them
        worker_bytes=int(
            (0 if s.use_gpu else spec.embedding_bytes_per_worker()) + settings.worker_overhead_gb * GIB
        ),
        driver_bytes=int(settings.driver_overhead_gb * GIB),
    )


@dataclass(frozen=True)
class Capacity:
    """The cluster's totals for jobs (reserve already taken off) and its largest node."""

    cpus: float
    gpus: float
    memory_bytes: int
    node_cpus: float
    node_gpus: float
    source: str

    def free(self, used: "Usage") -> "Usage":
        return Usage(
            max(0.0, self.cpus - used.cpus),
            max(0.0, self.gpus - used.gpus),
            max(0, self.memory_bytes - used.memory_bytes),
        )


@dataclass
class Usage:
    cpus: float = 0.0
    gpus: float = 0.0
    memory_bytes: int = 0

    def add(self, d: Demand) -> None:
        self.cpus += d.cpus
        self.gpus += d.gpus
        self.memory_bytes += d.memory_bytes


def never_fits(d: Demand, cap: Capacity) -> str | None:
    """Why the job can never run on this cluster (a message naming the field), or None."""
    where = "in the cluster"
    if d.cpus > cap.cpus + 1e-9:
        return (
            f"scaling.num_workers: {_plural(d.workers, 'worker')} x {_plural(d.cpus_per_worker, 'CPU')} "
            f"> {_plural(cap.cpus, 'CPU')} {where}; lower scaling.num_workers or scaling.cpus_per_worker"
        )
    if d.cpus_per_worker > cap.node_cpus + 1e-9:
        return (
            f"scaling.cpus_per_worker: {_plural(d.cpus_per_worker, 'CPU')} per worker > "
            f"{_plural(cap.node_cpus, 'CPU')} on the largest node; lower scaling.cpus_per_worker"
        )
    if d.gpus > cap.gpus + 1e-9:
        return (
            f"scaling.use_gpu: {_plural(d.workers, 'worker')} x 1 GPU > {_plural(cap.gpus, 'GPU')} {where}; "
            "lower scaling.num_workers or set scaling.use_gpu: false"
        )
    if d.memory_bytes > cap.memory_bytes:
        return (
            f"scaling.num_workers: {_plural(d.workers, 'worker')} x {_gib(d.worker_bytes)} "
            f"(embeddings + Ray overhead) + {_gib(d.driver_bytes)} driver = {_gib(d.memory_bytes)} "
            f"> {_gib(cap.memory_bytes)} of memory {where}; lower model.hash_size, "
            "model.embedding_dim or scaling.num_workers"
        )
    return None


def wait_reason(d: Demand, free: Usage) -> str | None:
    """Why the job cannot start now (what it waits for), or None when it fits."""
    if d.cpus > free.cpus + 1e-9:
        return f"waiting for {_plural(d.cpus, 'CPU')}; {_num(free.cpus)} free"
    if d.gpus > free.gpus + 1e-9:
        return f"waiting for {_plural(d.gpus, 'GPU')}; {_num(free.gpus)} free"
    if d.memory_bytes > free.memory_bytes:
        return f"waiting for {_gib(d.memory_bytes)} of memory; {_gib(free.memory_bytes)} free"
    return None


def ray_totals(address: str, allow_empty: bool = False) -> tuple[float, float, float, float, float]:
    """(cpus, gpus, memory bytes, largest node's cpus, its gpus) of Ray's alive nodes;
    ``allow_empty``: zeros when no node has CPUs (an autoscaling cluster at zero workers)."""
    from ray.util.state import list_nodes

    nodes = list_nodes(address=address, limit=10_000, timeout=10, raise_on_missing_output=False)
    cpus = gpus = mem = ncpu = ngpu = 0.0
    for n in nodes:
        if str(getattr(n, "state", "ALIVE")) != "ALIVE":
            continue
        res = n.resources_total or {}
        cpus += float(res.get("CPU", 0))
        gpus += float(res.get("GPU", 0))
        mem += float(res.get("memory", 0))
        ncpu = max(ncpu, float(res.get("CPU", 0)))
        ngpu = max(ngpu, float(res.get("GPU", 0)))
    if not cpus and not allow_empty:
        raise RuntimeError("Ray reports no alive node with CPUs")
    return cpus, gpus, mem, ncpu, ngpu


def _machine_totals() -> tuple[float, float, float, float, float]:
    import psutil

    cpus = float(len(os.sched_getaffinity(0)) or os.cpu_count() or 1)  # the cores this process may use
    return cpus, 0.0, float(psutil.virtual_memory().total), cpus, 0.0


def _shape_totals(groups: list[WorkerGroupShape]) -> tuple[float, float, float, float, float]:
    """The worker groups at their maximum, as :func:`ray_totals` reports alive nodes."""
    cpus = sum(g.replicas * g.cpus for g in groups)
    gpus = sum(g.replicas * g.gpus for g in groups)
    mem = sum(g.replicas * g.memory_gb * GIB for g in groups)
    ncpu = max((g.cpus for g in groups if g.replicas), default=0.0)
    ngpu = max((g.gpus for g in groups if g.replicas), default=0.0)
    return cpus, gpus, mem, ncpu, ngpu


class CapacityReader:
    """Reads (and caches for a few seconds) the cluster's capacity for jobs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cached: Capacity | None = None
        self._at = 0.0
        self.error: str | None = None  # why the last read failed
        self._live: Usage | None = None
        self._live_at = 0.0
        self.live_error: str | None = None

    async def read(self) -> Capacity | None:
        """The capacity, or None when it cannot be known now (Ray unreachable)."""
        if self._cached is not None and time.monotonic() - self._at < _CACHE_S:
            return self._cached
        s = self.settings
        overrides = (s.capacity_cpus, s.capacity_gpus, s.capacity_memory_gb)
        try:
            if all(v is not None for v in overrides):
                totals, source = (0.0, 0.0, 0.0, 0.0, 0.0), "RECTRAIN_CAPACITY_*"
            elif s.worker_groups:
                totals = _shape_totals(s.worker_groups)
                source = "the autoscaling worker groups at their maximum (RECTRAIN_AUTOSCALING_SHAPE)"
            elif s.ray_address:  # a dashboard URL (Ray Jobs launcher) or a GCS address (local)
                totals = await asyncio.to_thread(ray_totals, s.ray_address)
                source = f"ray at {s.ray_address}"
            else:
                totals, source = _machine_totals(), "this machine"
        except Exception as e:  # Ray away: the queue waits, submissions are not refused
            self.error = f"cannot read the cluster's capacity from Ray at {s.ray_address}: {e}"
            log.warning("%s", self.error)
            return None
        cpus, gpus, mem, ncpu, ngpu = totals
        if s.capacity_cpus is not None:
            cpus = ncpu = s.capacity_cpus
        if s.capacity_gpus is not None:
            gpus = ngpu = s.capacity_gpus
        if s.capacity_memory_gb is not None:
            mem = s.capacity_memory_gb * GIB
        self.error = None
        self._cached = Capacity(
            cpus=max(0.0, cpus - s.reserve_cpus),
            gpus=gpus,
            memory_bytes=int(max(0.0, mem - s.reserve_memory_gb * GIB)),
            node_cpus=min(ncpu, max(0.0, cpus - s.reserve_cpus)),
            node_gpus=ngpu,
            source=source,
        )
        self._at = time.monotonic()
        return self._cached

    async def live(self) -> Usage | None:
        """What the alive nodes hold now (reserve taken off; zeros with no worker up), for
        an autoscaling cluster; None when Ray cannot be read (``live_error`` says why)."""
        if self._live is not None and time.monotonic() - self._live_at < _CACHE_S:
            return self._live
        s = self.settings
        try:
            cpus, gpus, mem, _, _ = await asyncio.to_thread(ray_totals, s.ray_address or "", True)
        except Exception as e:
            self.live_error = f"cannot read the live nodes from Ray at {s.ray_address}: {e}"
            log.warning("%s", self.live_error)
            return None
        self.live_error = None
        self._live = Usage(
            max(0.0, cpus - s.reserve_cpus), gpus, int(max(0.0, mem - s.reserve_memory_gb * GIB))
        )
        self._live_at = time.monotonic()
        return self._live


def _request_resources(gcs_address: str, bundles: list[dict[str, float]]) -> None:
    """Ray's ``ray.autoscaler.sdk.request_resources(bundles=...)`` without ``ray.init``.

    The SDK call needs this process to be a driver connected to the cluster; the API is
    not one (on Kubernetes it runs beside the cluster and reaches only its GCS port), so
    this does what the SDK does after its ``ray.is_initialized()`` check, with a GCS
    client of its own: the v2 autoscaler's cluster resource constraint, or the v1
    autoscaler's request in the GCS key-value store (which its monitor reads every loop).
    An empty list withdraws the request, so that idle workers can scale down again.
    """
    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    client = GcsClient(address=gcs_address)
    if is_autoscaler_v2(fetch_from_server=True, gcs_client=client):
        from ray.autoscaler.v2.sdk import request_cluster_resources

        request_cluster_resources(gcs_address, [{"resources": b, "label_selector": {}} for b in bundles])
    else:
        client.internal_kv_put(
            AUTOSCALER_RESOURCE_REQUEST_CHANNEL, json.dumps(bundles).encode(), overwrite=True, namespace=None
        )


class Autoscaler:
    """Asks Ray's autoscaler for the bundles the cluster should hold (only on a change)."""

    def __init__(self, settings: Settings) -> None:
        self.gcs_address = settings.gcs_address or ""
        self.requested: list[dict[str, float]] | None = None  # None: never asked (yet)
        self.error: str | None = None

    async def request(self, bundles: list[dict[str, float]]) -> bool:
        """Ask for ``bundles`` (the whole set; replaces the last request). False on failure."""
        want = sorted(bundles, key=lambda b: sorted(b.items()))
        if want == self.requested:
            return True
        try:
            await asyncio.to_thread(_request_resources, self.gcs_address, want)
        except Exception as e:
            self.error = f"cannot ask the Ray autoscaler at {self.gcs_address}: {type(e).__name__}: {e}"
            log.warning("%s", self.error)
            return False
        log.info("asked the Ray autoscaler for %d bundles: %s", len(want), want)
        self.requested, self.error = want, None
        return True
