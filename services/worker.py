"""The control loops, and ``rectrain worker``: the process that runs them on its own.

The control loops are what moves jobs and studies along without a request:

- the dispatcher (:mod:`services.queue`): starts queued jobs within capacity; one
  process at a time holds its lease (``keys.dispatch_leader_key``), the others wait;
- the reaper (:mod:`services.reaper`): settles jobs whose runner died (every step
  atomic or idempotent, so several may sweep at once);
- the study reconciler (:func:`services.studies.study_loop`): submits and settles the
  runs of active studies (idempotent likewise);
- a listener that wakes the dispatcher when any process queues a job
  (``keys.dispatch_wake_channel``), so a job submitted to an API replica starts without
  waiting for the dispatcher's next tick.

Where they run is ``RECTRAIN_CONTROL_LOOPS``: ``in-process`` (the default) runs them in
the API process's lifespan (``api.main.create_app``), as one process on a laptop or in
tests; ``off`` runs none in the API and a ``rectrain worker`` (:func:`main`, ``python -m
services.worker``) runs them against the same Redis and Ray settings. The leases make any
mix safe: API replicas with the loops off and one worker (the Helm chart), two workers,
or API replicas with the loops in-process. The worker also launches the jobs' runners
(they are detached: restarting the worker does not touch running jobs) and, with
``RECTRAIN_METRICS_PORT``, serves its own Prometheus metrics there (queue wait of the
jobs it dispatched, whether it holds the dispatcher lease, jobs by status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import Literal

from services import keys
from services.jobs import JobStatus, JobStore
from services.launcher import JobLauncher
from services.queue import Dispatcher, dispatch_loop, notify_dispatchers
from services.reaper import reaper_loop
from services.redis_conn import EmbeddedRedis, async_client
from services.settings import Settings, settings_or_errors
from services.studies import StudyStore, study_loop

log = logging.getLogger("rectrain.worker")

ControlLoopsMode = Literal["in-process", "off"]

_METRICS_REFRESH_S = 5.0


async def wake_on_submit(store: JobStore) -> None:
    """Wake this process's dispatchers whenever any process publishes on the wake
    channel (:func:`services.submit.submit_job` does after queueing a job)."""
    while True:
        pubsub = store.queues.pubsub()
        try:
            await pubsub.subscribe(keys.dispatch_wake_channel())
            while True:
                msg = await pubsub.get_message(timeout=1.0)
                if msg is not None:
                    notify_dispatchers()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # Redis away: the dispatcher still ticks; listen again later
            log.debug("dispatch wake listener: %s: %s", type(e).__name__, e)
            await asyncio.sleep(1.0)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 2)


class ControlLoops:
    """The dispatcher, the reaper, the study reconciler and the wake listener as tasks of
    the running event loop (:meth:`start`), stopped together (:meth:`stop`: the
    dispatcher gives up its lease)."""

    def __init__(
        self,
        store: JobStore,
        studies: StudyStore,
        launcher: JobLauncher,
        *,
        on_dispatch: Callable[[str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.studies = studies
        self.launcher = launcher
        self.settings = launcher.settings
        self.dispatcher = Dispatcher(store, launcher, on_dispatch=on_dispatch)
        self.tasks: list[asyncio.Task] = []

    def start(self) -> list[asyncio.Task]:
        s = self.settings
        self.tasks = [
            asyncio.create_task(reaper_loop(self.store, self.launcher, s.reaper_interval_s), name="reaper"),
            asyncio.create_task(
                study_loop(self.studies, self.launcher, s.study_reconcile_interval_s), name="studies"
            ),
            asyncio.create_task(dispatch_loop(self.dispatcher, s.dispatch_interval_s), name="dispatcher"),
            asyncio.create_task(wake_on_submit(self.store), name="dispatch-wake"),
        ]
        return self.tasks

    async def stop(self, timeout_s: float = 5.0) -> None:
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            # bounded: a task stuck in a thread (or a dead Redis) must not hold the shutdown
            await asyncio.wait(self.tasks, timeout=timeout_s)
        self.tasks = []


class WorkerTelemetry:
    """The worker's Prometheus registry (served on RECTRAIN_METRICS_PORT when set)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.queue_wait = Histogram(
            "rectrain_queue_wait_seconds",
            "Time from submission to dispatch, for jobs this worker dispatched",
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600),
        )
        self.leader = Gauge(
            "rectrain_worker_dispatch_leader",
            "1 while this worker holds the dispatcher lease",
            registry=self.registry,
        )
        self.jobs = Gauge("rectrain_jobs", "Jobs by status", ["status"], registry=self.registry)
        self.redis_up = Gauge(
            "rectrain_redis_up", "1 if Redis answered the last refresh", registry=self.registry
        )

    async def refresh_loop(self, store: JobStore, dispatcher: Dispatcher) -> None:
        while True:
            try:
                counts = await store.queues.count_by_status()
                for st in JobStatus:
                    self.jobs.labels(status=st.value).set(counts.get(st, 0))
                holder = await store.leases.dispatch_leader()
                self.leader.set(1 if holder == dispatcher.token else 0)
                self.redis_up.set(1)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.redis_up.set(0)
            await asyncio.sleep(_METRICS_REFRESH_S)


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Run the control loops until ``stop`` is set. Without REDIS_URL it uses (starting
    it if need be) the embedded Redis of the data directory."""
    embedded = None
    url = settings.redis_url
    if not url:
        embedded = EmbeddedRedis(settings.data_dir)
        url = await asyncio.to_thread(embedded.start)
        log.info("embedded Redis at %s", url)
    redis = async_client(
        url, max_connections=settings.redis_max_connections, pool_timeout_s=settings.redis_pool_timeout_s
    )
    store = JobStore(redis)
    launcher = JobLauncher(settings, url)
    telemetry = WorkerTelemetry() if settings.metrics_port is not None else None
    loops = ControlLoops(
        store,
        StudyStore(store),
        launcher,
        on_dispatch=(lambda _id, waited: telemetry.queue_wait.observe(waited)) if telemetry else None,
    )
    loops.start()
    extra: list[asyncio.Task] = []
    metrics_server = None
    if telemetry is not None:
        from prometheus_client import start_http_server

        assert settings.metrics_port is not None
        metrics_server, _ = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=telemetry.registry
        )
        extra.append(asyncio.create_task(telemetry.refresh_loop(store, loops.dispatcher)))
        log.info("Prometheus metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    log.info(
        "rectrain worker: dispatcher, reaper and study reconciler on %s; launcher %s%s",
        "embedded Redis" if embedded is not None else "REDIS_URL",
        settings.effective_launcher,
        f" (Ray Jobs API at {settings.ray_address})" if settings.effective_launcher == "ray" else "",
    )
    try:
        await stop.wait()
    finally:
        log.info("rectrain worker: stopping the control loops")
        for t in extra:
            t.cancel()
        await loops.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(redis.aclose(), 5)
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _serve_until_signalled(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_worker(settings, stop)


def main(argv: list[str] | None = None) -> int:
    """``rectrain worker`` / ``python -m services.worker``: the control loops until
    SIGTERM or Ctrl-C; exit 0 after a clean stop, 2 for settings it refuses."""
    from services.logs import setup_logging

    setup_logging()
    settings = settings_or_errors("worker")
    if settings is None:
        return 2
    asyncio.run(_serve_until_signalled(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
