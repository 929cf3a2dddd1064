"""WarmBackend.stop (services/warm_backend.py): a cancel reaches the warm run as its
cancel flag (trainer.warm.WarmGroup.run's ``cancel``), and the runner waits for the
run's thread to end, but not for ever: a thread that cannot give up (one still joining
Ray) leaves the job cancelled and the runner taking no further run. The run's thread is
a stand-in here (pure asyncio logic); tests/trainer/test_warm.py cancels real groups."""

from __future__ import annotations

import asyncio
import threading
import time

from services import warm_backend
from services.jobs import JobRecord, JobStatus
from services.warm_backend import WarmBackend, WarmState


def _backend(settings) -> WarmBackend:
    job = JobRecord(id="j1", owner="alice", status=JobStatus.STARTING, spec={}, created_at=time.time())
    return WarmBackend(settings, job, settings.redis_url or "")


def test_stop_sets_the_runs_cancel_flag_and_waits_for_the_run(settings, monkeypatch):
    b = _backend(settings)
    seen = threading.Event()

    def run():  # a run that gives up when its flag is set, as WarmGroup.run does
        while not b.cancel.wait(0.01):
            pass
        time.sleep(0.2)  # ending its workers
        seen.set()
        raise RuntimeError("ActorDiedError")

    monkeypatch.setattr(b, "_run", run)

    async def go():
        await b.start()
        assert await b.poll() is None
        await b.stop(grace_s=5.0)
        return await b.poll()

    out = asyncio.run(go())
    assert seen.is_set() and out is not None and not out.ok and out.reason == "cancelled"


def test_a_run_that_cannot_give_up_does_not_hold_the_runner(settings, monkeypatch):
    b = _backend(settings)
    release = threading.Event()
    monkeypatch.setattr(b, "_run", lambda: release.wait(30))  # deaf to its cancel flag
    monkeypatch.setattr(warm_backend, "_STOP_WAIT_S", 0.5)

    async def go():
        await b.start()
        t0 = time.monotonic()
        await b.stop(grace_s=0.5)
        waited = time.monotonic() - t0
        assert WarmState.used is False  # this runner takes no further run
        out = await b.poll()
        release.set()
        return waited, out

    try:
        waited, out = asyncio.run(go())
    finally:
        release.set()
        WarmState.used = False
    assert 0.9 <= waited < 5 and out is None and b.cancel.is_set()
