"""The job queue through the real API (uvicorn, Redis, runner processes): bursts wait for
capacity and start in a fair order, limits answer 422/429, queued jobs can be cancelled,
survive an API kill, and two API replicas start every job exactly once. The stand-in
trainer (tests/services/fake_trainer.py) keeps the scheduling tests fast; real jobs on the
Ray head that ``rectrain serve`` owns are trained in tests/hardening/test_serve_loopback.py
(with the serve it starts there)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest
from api_helpers import (
    ALICE,
    BOB,
    TERMINAL,
    ProcessServer,
    ThreadServer,
    client_for,
    settings_env,
    wait_status,
)
from test_api_basics import TINY

from services import keys
from trainer.spec import JobSpec


@pytest.fixture
def qsettings(settings):
    """Room for exactly two one-CPU jobs; at most 4 queued per owner."""
    return settings.model_copy(
        update={
            "capacity_cpus": 2,
            "capacity_gpus": 0,
            "capacity_memory_gb": 8,
            "reserve_memory_gb": 0,
            "max_queued_per_owner": 4,
            "dispatch_interval_s": 0.2,
            # the per-job ceilings (services.admission) out of the way: the cluster fit answers
            "max_workers": 1024,
        }
    )


def _submit(c: httpx.Client, name: str, mode: str = "ok", **extra) -> str:
    r = c.post("/v1/jobs", json={"spec": TINY, "name": name, "labels": {"mode": mode}, **extra})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "queued"
    return r.json()["id"]


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def _wait(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s")
        time.sleep(0.1)
    return v


def _queued(c: httpx.Client) -> dict[str, dict]:
    return {j["id"]: j for j in c.get("/v1/jobs", params={"status": "queued"}).json()["data"]}


def _positioned(q: dict[str, dict]) -> dict[str, dict] | None:
    """The queued jobs once a dispatcher tick has numbered them all 1..n."""
    return q if sorted(j["queue_position"] or 0 for j in q.values()) == list(range(1, len(q) + 1)) else None


class ActiveSampler(threading.Thread):
    """Samples how many jobs hold capacity (starting + running) every 20 ms."""

    def __init__(self, redis_client) -> None:
        super().__init__(daemon=True)
        self.r, self.stop, self.samples = redis_client, threading.Event(), []

    def run(self) -> None:
        while not self.stop.is_set():
            p = self.r.pipeline(transaction=True)
            p.zcard(keys.status_index_key("starting"))
            p.zcard(keys.status_index_key("running"))
            self.samples.append(sum(p.execute()))
            time.sleep(0.02)


def _max_overlap(jobs: list[dict]) -> int:
    edges = []
    for j in jobs:
        if j["started_at"]:
            edges += [(j["started_at"], 1), (j["finished_at"], -1)]
    cur = best = 0
    for _, d in sorted(edges, key=lambda e: (e[0], e[1])):
        cur += d
        best = max(best, cur)
    return best


def test_burst_waits_for_capacity_in_fair_order(qsettings, redis_client):
    from api.main import create_app

    srv = ThreadServer(create_app(qsettings)).start()
    alice, bob = client_for(srv.url, ALICE), client_for(srv.url, BOB)
    sampler = ActiveSampler(redis_client)
    try:
        hold = [_submit(alice, f"hold{i}", "slow") for i in range(2)]
        for j in hold:
            wait_status(alice, j, lambda s: s == "running")
        a = [_submit(alice, f"a{i}") for i in range(4)]
        b = [_submit(bob, f"b{i}") for i in range(2)]
        # alice has 4 queued: the most allowed
        r = alice.post("/v1/jobs", json={"spec": TINY})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        assert "RECTRAIN_MAX_QUEUED_PER_OWNER=4" in r.json()["detail"]
        # a queued job is cancelled at once and never starts
        gone = _submit(bob, "gone")
        assert bob.post(f"/v1/jobs/{gone}/cancel").json()["status"] == "cancelled"

        # every queued job shows its position and why it waits; bob's turn comes first
        q = _wait(lambda: _positioned({**_queued(alice), **_queued(bob)}), what="positions")
        assert set(q) == set(a + b)
        assert [q[j]["queue_position"] for j in (b[0], a[0], b[1], a[1], a[2], a[3])] == [1, 2, 3, 4, 5, 6]
        assert q[b[0]]["wait_reason"] == "waiting for 1 CPU; 0 free"
        assert q[a[3]]["wait_reason"] == "waiting for its turn: 5 jobs ahead"
        assert _metric(srv.url, "rectrain_queue_length") == 6
        assert _metric(srv.url, "rectrain_jobs_running") == 2

        sampler.start()
        for j in hold:
            alice.post(f"/v1/jobs/{j}/cancel")
        done = {
            j: wait_status(alice if j in a + hold else bob, j, lambda s: s in TERMINAL, 90)
            for j in a + b + hold
        }
        sampler.stop.set()
        sampler.join(5)
        assert all(done[j]["status"] == "succeeded" for j in a + b), {j: d["error"] for j, d in done.items()}
        assert max(sampler.samples) == 2 and len(sampler.samples) > 20
        assert _max_overlap(list(done.values())) <= 2
        # FIFO per owner, round robin across owners
        started = sorted(a + b, key=lambda j: done[j]["started_at"])
        assert started == [b[0], a[0], b[1], a[1], a[2], a[3]]
        assert all(done[j]["queue_position"] is None and done[j]["wait_reason"] is None for j in a + b)

        cancelled = bob.get(f"/v1/jobs/{gone}").json()
        assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None
        events = bob.get(f"/v1/jobs/{gone}/metrics").json()["data"]
        assert [e["event"]["status"] for e in events] == ["queued", "cancelled"]
        assert not (qsettings.data_dir / "runs" / gone).exists()
        assert _metric(srv.url, "rectrain_queue_wait_seconds_count") == 8
    finally:
        sampler.stop.set()
        alice.close()
        bob.close()
        srv.stop()


def _workers(n: int) -> dict:
    """TINY on ``n`` workers (the NE window must hold one batch of every worker)."""
    return {**TINY, "scaling": {"num_workers": n}, "metrics": {"window_size": 256 * n}}


def _embedding_gib_spec(gib: float) -> dict:
    """TINY with one worker holding about ``gib`` GiB of embeddings."""
    base = JobSpec.model_validate(TINY)
    per_row = base.embedding_bytes_per_worker() / base.model.hash_size
    return {**TINY, "model": {**TINY["model"], "hash_size": int(gib * (1 << 30) / per_row)}}


def test_jobs_that_can_never_fit_get_422_with_the_numbers(qsettings):
    from api.main import create_app

    srv = ThreadServer(create_app(qsettings)).start()
    alice = client_for(srv.url, ALICE)
    try:
        r = alice.post("/v1/jobs", json={"spec": _workers(64)})
        assert r.status_code == 422
        (err,) = r.json()["detail"]
        assert err["loc"] == ["body", "spec", "scaling", "num_workers"]
        assert err["msg"].startswith("scaling.num_workers: 64 workers x 1 CPU > 2 CPUs in the cluster")
        # memory counts too: 7 GiB of embeddings + 0.75 GiB Ray overhead + 0.5 GiB driver > 8 GiB
        r = alice.post("/v1/jobs", json={"spec": _embedding_gib_spec(7.0)})
        assert r.status_code == 422, r.text
        msg = r.json()["detail"][0]["msg"]
        assert (
            msg.startswith("scaling.num_workers: 1 worker x 7.") and "> 8 GiB of memory in the cluster" in msg
        )
        assert alice.get("/v1/jobs").json()["count"] == 0
    finally:
        alice.close()
        srv.stop()


def test_queue_survives_an_api_kill(qsettings, tmp_path):
    api = ProcessServer(settings_env(qsettings)).start(tmp_path / "api1.log")
    alice = client_for(api.url, ALICE)
    try:
        hold = [_submit(alice, f"hold{i}", "slow") for i in range(2)]
        for j in hold:
            wait_status(alice, j, lambda s: s == "running")
        q = [_submit(alice, f"q{i}") for i in range(3)]
        _wait(lambda: _positioned(_queued(alice)), what="positions")
        api.stop("kill")
        api = ProcessServer(settings_env(qsettings), port=api.port).start(tmp_path / "api2.log")
        # the new process takes over the dispatcher (after the dead one's lease expires)
        after = _wait(lambda: _positioned(_queued(alice)), what="positions after the restart")
        assert [after[j]["queue_position"] for j in q] == [1, 2, 3]
        # `rectrain jobs` shows the positions and why the head of the queue waits
        out = subprocess.run(
            [sys.executable, "-m", "cli", "jobs"],
            env=dict(os.environ, RECTRAIN_API_URL=api.url, RECTRAIN_TOKEN=ALICE),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith(q[0]) and "queued" in ln)
        assert "#1" in line
        assert f"  {q[0]}  #1: waiting for 1 CPU; 0 free" in out.stdout
        for j in hold:  # the running jobs' runners outlived the API: cancel reaches them
            alice.post(f"/v1/jobs/{j}/cancel")
        done = {j: wait_status(alice, j, lambda s: s in TERMINAL, 90) for j in q + hold}
        assert [done[j]["status"] for j in hold] == ["cancelled"] * 2
        assert all(done[j]["status"] == "succeeded" for j in q), {j: done[j]["error"] for j in q}
        assert sorted(q, key=lambda j: done[j]["started_at"]) == q
    finally:
        alice.close()
        api.stop()


def test_two_api_replicas_start_each_job_exactly_once(qsettings, redis_client):
    from api.main import create_app

    s = qsettings.model_copy(update={"capacity_cpus": 3, "max_queued_per_owner": 10})
    one, two = ThreadServer(create_app(s)).start(), ThreadServer(create_app(s)).start()
    alice, bob = client_for(one.url, ALICE), client_for(two.url, BOB)
    try:
        ids = []
        for i in range(4):
            ids += [(alice, _submit(alice, f"a{i}")), (bob, _submit(bob, f"b{i}"))]
        done = {j: wait_status(c, j, lambda st: st in TERMINAL, 90) for c, j in ids}
        assert all(d["status"] == "succeeded" for d in done.values()), {
            j: d["error"] for j, d in done.items()
        }
        for _, j in ids:
            statuses = [
                json.loads(f["data"])["status"]
                for _, f in redis_client.xrange(keys.events_stream_key(j))
                if json.loads(f["data"]).get("type") == "status"
            ]
            assert statuses == ["queued", "starting", "running", "succeeded"], statuses
            log = (s.data_dir / "runs" / j / "runner.log").read_text()
            assert log.count("running (") == 1 and "another runner" not in log and "not starting" not in log
        # both replicas run a dispatcher; together they dispatched each job once
        waits = _metric(one.url, "rectrain_queue_wait_seconds_count") + _metric(
            two.url, "rectrain_queue_wait_seconds_count"
        )
        assert waits == 8
    finally:
        alice.close()
        bob.close()
        one.stop()
        two.stop()
