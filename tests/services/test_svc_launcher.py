"""Runners (services.runner) driving the fake trainer: success, failure, cancel, kills, reaper."""

from __future__ import annotations

import os
import signal
import time

import pytest
from svc_helpers import open_store, run

from services import keys
from services.jobs import JobStatus
from services.launcher import JobLauncher
from services.reaper import reap_once

SPEC = {"training": {"num_passes": 2}}


def create(settings, labels=None):
    async def go():
        async with open_store(settings.redis_url) as store:
            return (
                await store.create(
                    owner="alice", spec=SPEC, num_passes=2, labels=labels or {}, launcher="local"
                )
            ).id

    return run(go())


def get(settings, job_id):
    async def go():
        async with open_store(settings.redis_url) as store:
            return await store.get(job_id), await store.events.summary(job_id)

    return run(go())


def wait_for(settings, job_id, pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job, summary = get(settings, job_id)
        if pred(job):
            return job, summary
        time.sleep(0.1)
    raise AssertionError(
        f"{what} not reached in {timeout}s; job is {job}; runner log:\n{_log(settings, job_id)}"
    )


def _log(settings, job_id):
    p = settings.data_dir / "runs" / job_id / "runner.log"
    return p.read_text() if p.exists() else "(none)"


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a non-reaping init counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def is_(status):
    return lambda j: j.status == status


def test_job_succeeds_with_results(settings):
    jid = create(settings)
    JobLauncher(settings, settings.redis_url).launch(jid)
    job, summary = wait_for(settings, jid, lambda j: j.status.is_terminal, what="terminal")
    assert job.status == JobStatus.SUCCEEDED, _log(settings, jid)
    assert [p["pass"] for p in summary["passes"]] == [0, 1]
    # selected by validation NE (pass 0), not by the lower test NE of pass 1
    assert summary["selection"] == "validation" and summary["selected_pass"] == 0
    assert summary["test_ne_at_selected"] == pytest.approx(0.93) and summary["last_pass"] == 1
    assert summary["oracle_test_ne"] == pytest.approx(0.81)
    assert job.trainer_pid and job.run_dir and job.started_at <= job.finished_at
    # the runner logs through services.logs: every line greppable by the job id
    lines = [ln for ln in _log(settings, jid).splitlines() if " rectrain.runner " in ln]
    assert lines and all(f" job={jid} " in ln for ln in lines), _log(settings, jid)


def test_trainer_failure_is_reported_with_its_reason(settings):
    jid = create(settings, {"mode": "fail"})
    JobLauncher(settings, settings.redis_url).launch(jid)
    job, _ = wait_for(settings, jid, lambda j: j.status.is_terminal)
    assert job.status == JobStatus.FAILED
    # the trainer's own line is the error; the exit status and log tail are kept apart
    assert job.error == "data.path: no such file (fake failure)"
    assert job.error_log and "exited with code 3" in job.error_log and "fake failure" in job.error_log


def test_a_diverged_trainer_fails_with_its_own_reason(settings):
    jid = create(settings, {"mode": "diverge"})
    JobLauncher(settings, settings.redis_url).launch(jid)
    job, _ = wait_for(settings, jid, lambda j: j.status.is_terminal)
    assert job.status == JobStatus.FAILED and job.error == "diverged at step 4 (loss = nan)"
    assert job.error_log and "noise line 39" in job.error_log and "\x1b" not in job.error_log


@pytest.mark.parametrize("mode", ["slow", "stubborn"])
def test_cancel_stops_the_trainer(settings, mode):
    jid = create(settings, {"mode": mode})
    JobLauncher(settings, settings.redis_url).launch(jid)
    job, _ = wait_for(settings, jid, is_(JobStatus.RUNNING))

    async def cancel():
        async with open_store(settings.redis_url) as store:
            return await store.request_cancel(jid)

    assert run(cancel()) == JobStatus.RUNNING
    t0 = time.monotonic()
    job, _ = wait_for(settings, jid, lambda j: j.status.is_terminal, timeout=settings.cancel_grace_s + 5)
    assert job.status == JobStatus.CANCELLED and time.monotonic() - t0 < settings.cancel_grace_s + 3
    assert not alive(job.trainer_pid)


def test_killed_trainer_marks_the_job_failed_with_the_reason(settings):
    jid = create(settings, {"mode": "slow"})
    JobLauncher(settings, settings.redis_url).launch(jid)
    job, _ = wait_for(settings, jid, lambda j: j.status == JobStatus.RUNNING and j.trainer_pid)
    os.kill(job.trainer_pid, signal.SIGKILL)
    job, _ = wait_for(settings, jid, lambda j: j.status.is_terminal)
    assert job.status == JobStatus.FAILED and "killed by SIGKILL" in job.error


def test_dead_runner_is_reaped_and_its_trainer_stopped(settings):
    launcher = JobLauncher(settings, settings.redis_url)
    jid = create(settings, {"mode": "slow"})
    launcher.launch(jid)
    job, _ = wait_for(settings, jid, lambda j: j.status == JobStatus.RUNNING and j.trainer_pid)
    os.kill(job.runner_pid, signal.SIGKILL)

    async def reap_until_done():
        async with open_store(settings.redis_url) as store:
            deadline = time.monotonic() + settings.heartbeat_ttl_s + 5
            while time.monotonic() < deadline:
                done = await reap_once(store, launcher)
                if jid in done:
                    return done[jid]
                await __import__("asyncio").sleep(0.2)

    assert run(reap_until_done()) == "failed"
    job, _ = get(settings, jid)
    assert job.status == JobStatus.FAILED and "launcher lost" in job.error and "no heartbeat" in job.error
    time.sleep(0.3)
    assert not alive(job.trainer_pid)  # the orphan was killed


def test_only_one_runner_per_job(settings, redis_client):
    launcher = JobLauncher(settings, settings.redis_url)
    jid = create(settings, {"mode": "slow"})
    a = launcher.launch(jid)
    wait_for(settings, jid, is_(JobStatus.RUNNING))
    b = launcher.launch(jid)
    assert b.wait(20) == 0  # the second runner found the heartbeat taken and left
    assert a.poll() is None
    owner_token = redis_client.get(keys.heartbeat_key(jid))
    assert owner_token and owner_token.split(":")[1] == str(a.pid)

    async def cancel():
        async with open_store(settings.redis_url) as store:
            await store.request_cancel(jid)

    run(cancel())
    wait_for(settings, jid, lambda j: j.status.is_terminal)
    assert a.wait(10) == 0


def test_split_failure_prefers_the_trainers_reason(redis_url, redis_client):
    """A Ray job's raw reason (status, ANSI-coloured log tail): without a failed event the
    trainer CLI's `rectrain:` line is the error; nothing at all: the first line."""
    import asyncio

    import redis.asyncio as aioredis

    from services.failure import split_failure

    raw = (
        "Ray job raysubmit_1 failed: Job entrypoint command failed with exit code 2\n"
        "\x1b[36m(TorchTrainer pid=1)\x1b[0m Traceback (most recent call last):\n"
        "\x1b[33mrectrain: training.init_from.checkpoint: not a checkpoint this service wrote\x1b[0m"
    )

    async def go():
        r = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            return (
                await split_failure(r, "nojob", raw),
                await split_failure(r, "nojob", "trainer exited with code 1"),
            )
        finally:
            await r.aclose()

    (error, log), (error2, _) = asyncio.run(go())
    assert error == "training.init_from.checkpoint: not a checkpoint this service wrote"
    assert log is not None and "\x1b" not in log and "exit code 2" in log
    assert error2 == "trainer exited with code 1"


def test_pythonpath_with_puts_the_dirs_first_and_never_an_empty_entry(tmp_path):
    """A child's PYTHONPATH: the given directories, then the parent's own entries; no
    empty entry (it would put the child's working directory on its path)."""
    from services.launch_env import pythonpath_with

    sep = os.pathsep
    assert pythonpath_with(tmp_path, "/b", env={}) == f"{tmp_path}{sep}/b"
    assert pythonpath_with("/a", env={"PYTHONPATH": ""}) == "/a"
    assert pythonpath_with("/a", env={"PYTHONPATH": f"/x{sep}/y"}) == f"/a{sep}/x{sep}/y"
    assert pythonpath_with("", "/a", env={"PYTHONPATH": "/x"}) == f"/a{sep}/x"
