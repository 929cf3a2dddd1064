"""Issue 17, point 7 (control plane): idempotent event writes, replay from the run
directory, and the reaper reconciling a finished job from results.json."""

from __future__ import annotations

import json
import time

from svc_helpers import open_store, run

from services import keys
from services.jobs import JobStatus
from services.launcher import JobLauncher, run_dir_for
from services.metrics_bus import add_events_once, replay_events_file
from services.reaper import reap_once


def _events(num_passes: int) -> list[dict]:
    out = [{"type": "lifecycle", "phase": "started", "step": 0, "pass": -1, "ts": 1.0}]
    step = 0
    for p in range(num_passes):
        for _ in range(3):
            step += 1
            out.append({"type": "train_window", "step": step, "pass": p, "ts": 2.0, "ne_window": 0.9})
        out.append({"type": "pass", "step": step, "pass": p, "ts": 3.0, "test_ne": 0.9 - p / 100})
        out.append({"type": "lifecycle", "phase": "pass_finished", "step": step, "pass": p, "ts": 3.0})
    out.append({"type": "lifecycle", "phase": "finished", "step": step, "pass": num_passes - 1, "ts": 4.0})
    return out


def test_writes_and_replays_are_idempotent(redis_client, tmp_path):
    jid = "0123456789abcdef"
    evs = _events(3)
    assert add_events_once(redis_client, jid, evs[:5], 1000) == 5
    assert add_events_once(redis_client, jid, evs[:5], 1000) == 0  # a retried batch
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in evs) + '{"type": "pa')  # torn last line
    assert replay_events_file(redis_client, jid, path) == len(evs) - 5
    assert replay_events_file(redis_client, jid, path) == 0
    stored = [json.loads(f["data"]) for _, f in redis_client.xrange(keys.events_stream_key(jid))]
    assert [e["pass"] for e in stored if e["type"] == "pass"] == [0, 1, 2]
    assert len(stored) == len(evs)


def test_reaper_reconciles_a_finished_job_from_its_run_dir(settings, redis_client):
    launcher = JobLauncher(settings, settings.redis_url)

    async def make():
        async with open_store(settings.redis_url) as store:
            job = await store.create(owner="alice", spec={}, num_passes=2, labels={}, launcher="local")
            await store.transition(job.id, JobStatus.STARTING)
            await store.transition(job.id, JobStatus.RUNNING)
            return job.id

    jid = run(make())
    evs = _events(2)
    add_events_once(redis_client, jid, evs[:2], 1000)  # the sink got only this far
    d = run_dir_for(settings, jid)
    d.mkdir(parents=True)
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evs))
    passes = [{"pass": p, "test_ne": 0.9 - p / 100} for p in range(2)]
    (d / "results.json").write_text(json.dumps({"passes": passes, "best_test_ne": 0.89, "best_pass": 1}))

    async def reap():
        async with open_store(settings.redis_url) as store:
            done = await reap_once(store, launcher)
            return done, await store.get(jid), await store.events.summary(jid)

    done, job, summary = run(reap())
    assert done[jid] == "succeeded" and job.status == JobStatus.SUCCEEDED and not job.error
    stored = [json.loads(f["data"]) for _, f in redis_client.xrange(keys.events_stream_key(jid))]
    assert sorted(e["pass"] for e in stored if e["type"] == "pass") == [0, 1]
    assert [p["test_ne"] for p in summary["passes"]] == [0.9, 0.89]  # results recorded


def test_no_job_is_declared_lost_right_after_redis_restarted(settings, redis_client, monkeypatch):
    """A heartbeat missing while Redis has been up for less than twice the TTL proves nothing."""
    launcher = JobLauncher(settings, settings.redis_url)

    async def go():
        async with open_store(settings.redis_url) as store:
            job = await store.create(owner="alice", spec={}, num_passes=1, labels={}, launcher="local")
            await store.transition(job.id, JobStatus.STARTING)
            await store.transition(job.id, JobStatus.RUNNING)
            orig = store.r.info

            async def young(section=None, *a, **kw):
                info = await orig(section, *a, **kw)
                return {**info, "uptime_in_seconds": 1}

            monkeypatch.setattr(store.r, "info", young)
            first = await reap_once(store, launcher)
            monkeypatch.setattr(store.r, "info", orig)
            deadline = time.monotonic() + 10
            second = {}
            while job.id not in second and time.monotonic() < deadline:
                second = await reap_once(store, launcher)
            return job.id, first, second

    jid, first, second = run(go())
    assert jid not in first and second.get(jid) == "failed"
