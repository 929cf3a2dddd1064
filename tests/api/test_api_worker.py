"""The control loops in a process of their own: ``rectrain worker`` beside an API with
``RECTRAIN_CONTROL_LOOPS=off`` (real processes over loopback, the session Redis, the
stand-in study trainer), and ``rectrain serve`` starting both and stopping them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from api_helpers import ALICE, REPO, TERMINAL, client_for, settings_env, wait_status
from test_api_basics import TINY

from services import keys
from services.serve import api_command
from tests.net import free_port
from tests.servers import ProcessServer, SubprocessServer


class ApiProcess(SubprocessServer):
    """``uvicorn api.main:create_app --factory``: the API alone, no supervisor."""

    def command(self) -> list[str]:
        return api_command(self.port, "--log-level", "warning")


def _worker(env: dict[str, str], log) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )


@pytest.fixture
def split_env(settings) -> dict[str, str]:
    env = settings_env(settings)
    env.update(RECTRAIN_TRAINER_MODULE="fake_study_trainer", RECTRAIN_DISPATCH_INTERVAL_S="0.3")
    return env


def test_a_worker_process_dispatches_for_an_api_with_its_loops_off(split_env, redis_client, tmp_path):
    api = ApiProcess(dict(split_env, RECTRAIN_CONTROL_LOOPS="off")).start(tmp_path / "api.log")
    worker = None
    c = client_for(api.url, ALICE)
    try:
        jid = c.post("/v1/jobs", json={"spec": TINY, "labels": {"pass_delay": "0.2"}}).json()["id"]
        # the API alone starts nothing: no dispatcher, no lease taken
        time.sleep(1.5)
        assert c.get(f"/v1/jobs/{jid}").json()["status"] == "queued"
        assert redis_client.get(keys.dispatch_leader_key()) is None
        # a long tick: the worker's first tick (at its start) dispatches the queued job, and
        # only the wake-up through Redis can start the next one soon
        metrics_port = free_port()
        worker = _worker(
            dict(split_env, RECTRAIN_DISPATCH_INTERVAL_S="30", RECTRAIN_METRICS_PORT=str(metrics_port)),
            tmp_path / "worker.log",
        )
        done = wait_status(c, jid, lambda s: s in TERMINAL, timeout=90)
        assert done["status"] == "succeeded", done["error"]
        assert done["passes_done"] == 2 and done["summary"]["test_ne_at_last"] is not None
        holder = redis_client.get(keys.dispatch_leader_key())
        assert holder and holder.split(":")[1] == str(worker.pid), holder  # the worker leads
        # its own metrics: the queue wait of the job it dispatched, the lease it holds
        deadline = time.monotonic() + 20
        while True:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            # the gauges are refreshed every few seconds
            if 'rectrain_jobs{status="succeeded"} 1.0' in text or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "rectrain_worker_dispatch_leader 1.0" in text, text
        assert "rectrain_queue_wait_seconds_count 1.0" in text, text
        assert 'rectrain_jobs{status="succeeded"} 1.0' in text, text
        # a second job submitted to the API wakes the worker's dispatcher through Redis
        t0 = time.monotonic()
        jid2 = c.post("/v1/jobs", json={"spec": TINY}).json()["id"]
        wait_status(c, jid2, lambda s: s != "queued", timeout=30)
        assert time.monotonic() - t0 < 10
        assert wait_status(c, jid2, lambda s: s in TERMINAL, timeout=90)["status"] == "succeeded"
        # SIGTERM: the worker stops its loops and gives its lease back
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert redis_client.get(keys.dispatch_leader_key()) is None
        log = (tmp_path / "worker.log").read_text()
        assert "rectrain worker: dispatcher, reaper and study reconciler" in log, log
    finally:
        c.close()
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(10)
        api.stop()
    # the API with nothing in the background shuts down cleanly too
    log = (tmp_path / "api.log").read_text()
    assert "shutdown failed" not in log and "Traceback" not in log, log


def test_two_workers_share_the_dispatcher_lease(split_env, redis_client, tmp_path):
    """Two workers (and an API with its loops off): one leads, every job runs once; when
    the leader stops, the other takes over."""
    api = ApiProcess(dict(split_env, RECTRAIN_CONTROL_LOOPS="off")).start(tmp_path / "api.log")
    w1 = _worker(split_env, tmp_path / "w1.log")
    w2 = _worker(split_env, tmp_path / "w2.log")
    c = client_for(api.url, ALICE)
    try:
        ids = [c.post("/v1/jobs", json={"spec": TINY}).json()["id"] for _ in range(3)]
        for jid in ids:
            assert wait_status(c, jid, lambda s: s in TERMINAL, timeout=90)["status"] == "succeeded"
        leader = redis_client.get(keys.dispatch_leader_key()).split(":")[1]
        first, second = (w1, w2) if leader == str(w1.pid) else (w2, w1)
        assert leader == str(first.pid)
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
        jid = c.post("/v1/jobs", json={"spec": TINY}).json()["id"]
        assert wait_status(c, jid, lambda s: s in TERMINAL, timeout=90)["status"] == "succeeded"
        assert redis_client.get(keys.dispatch_leader_key()).split(":")[1] == str(second.pid)
        assert c.get("/v1/jobs", params={"limit": 50}).json()["count"] == 4
    finally:
        c.close()
        for w in (w1, w2):
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                w.wait(30)
        api.stop()


def _serve_env(tmp_path) -> dict[str, str]:
    drop = ("REDIS_URL", "RAY_ADDRESS", "RECTRAIN_API_TOKENS", "RECTRAIN_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        RECTRAIN_DATA_DIR=str(tmp_path / "data"),
        RECTRAIN_TRAINER_MODULE="fake_study_trainer",
        RECTRAIN_LAUNCHER="local",  # no Ray head: test_api_queue.py covers serve's own head
    )
    return env


def _tree(pid: int) -> dict[int, str]:
    """serve's processes below it: pid -> a short description."""
    out = {}
    for p in psutil.Process(pid).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        out[p.pid] = "worker" if "services.worker" in cmd else "api" if "uvicorn" in cmd else p.name()
    return out


def _gone(pids, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_serve_runs_the_api_and_a_worker_and_stops_them_all(how, tmp_path, fake_trainer_path):
    from services.settings import DEV_TOKEN

    srv = ProcessServer(_serve_env(tmp_path)).start(tmp_path / "serve.log")
    c = client_for(srv.url, DEV_TOKEN)
    try:
        jid = c.post("/v1/jobs", json={"spec": TINY}).json()["id"]
        assert wait_status(c, jid, lambda s: s in TERMINAL, timeout=90)["status"] == "succeeded"
        tree = _tree(srv.proc.pid)
        kinds = sorted(tree.values())
        assert kinds.count("api") == 1 and kinds.count("worker") == 1, tree
        assert "redis-server" in kinds, tree  # the embedded Redis, owned by serve
        banner = (tmp_path / "serve.log").read_text()
        assert "control loops: a rectrain worker process beside the API" in banner, banner
        srv.proc.send_signal(getattr(signal, how))
        assert srv.proc.wait(60) == 0
        srv.proc = None
        assert _gone(tree, 10) == [], {p: tree[p] for p in _gone(tree, 0)}
        log = (tmp_path / "serve.log").read_text()
        assert "stopping the API and the worker" in log and "stopping the embedded Redis" in log, log
    finally:
        c.close()
        srv.stop()


def test_a_killed_serve_takes_its_api_and_worker_along(tmp_path, fake_trainer_path):
    """SIGKILL leaves serve no chance to stop anything: its API and worker die with it
    (parent-death signal); its embedded Redis, in a session of its own, is shared by the
    next serve (as before the split)."""
    env = _serve_env(tmp_path)
    srv = ProcessServer(env).start(tmp_path / "serve1.log")
    try:
        tree = _tree(srv.proc.pid)
        children = [p for p, k in tree.items() if k in ("api", "worker")]
        assert len(children) == 2, tree
        srv.stop("kill")
        assert _gone(children, 10) == []
        # a new serve on the same port and data directory comes up at once
        srv = ProcessServer(env, port=srv.port).start(tmp_path / "serve2.log")
        from services.settings import DEV_TOKEN

        with client_for(srv.url, DEV_TOKEN) as c:
            jid = c.post("/v1/jobs", json={"spec": TINY}).json()["id"]
            assert wait_status(c, jid, lambda s: s in TERMINAL, timeout=90)["status"] == "succeeded"
    finally:
        srv.stop()
        redis = [p for p, k in tree.items() if k == "redis-server"]
        for p in redis:  # the first serve's Redis: the second shared it and left it running
            try:
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass
