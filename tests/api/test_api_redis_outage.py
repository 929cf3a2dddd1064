"""Issue 17, point 7 end to end: the embedded Redis is SIGKILLed mid-job under
``rectrain serve``; it is restarted from its append-only file, the job succeeds and
every pass event is in its stream exactly once."""

from __future__ import annotations

import os
import signal
import time

import httpx
import redis
from api_helpers import ALICE, ProcessServer, client_for, settings_env, wait_status
from test_api_basics import TINY

from services.redis_conn import EmbeddedRedis

NUM_PASSES = 5


def _redis_pid(sock) -> int | None:
    try:
        c = redis.Redis(unix_socket_path=str(sock), socket_timeout=1)
        try:
            return int(c.info("server")["process_id"])
        finally:
            c.close()
    except (redis.RedisError, OSError):
        return None


def test_embedded_redis_killed_mid_job(settings, tmp_path):
    s = settings.model_copy(
        update={
            "redis_url": None,  # the embedded default
            "heartbeat_ttl_s": 2.0,
            "heartbeat_interval_s": 0.4,
            "reaper_interval_s": 0.4,
        }
    )
    env = settings_env(s)
    env.pop("REDIS_URL", None)
    sock = EmbeddedRedis(s.data_dir).socket
    api = ProcessServer(env).start(tmp_path / "api.log")
    c = client_for(api.url, ALICE)
    try:
        spec = {**TINY, "training": {"num_passes": NUM_PASSES}}
        job = c.post("/v1/jobs", json={"spec": spec, "labels": {"step_s": "0.25"}}).json()
        jid = job["id"]

        def passes() -> list[int]:
            data = c.get(f"/v1/jobs/{jid}/metrics", params={"limit": 1000}).json()["data"]
            return [e["event"]["pass"] for e in data if e["event"]["type"] == "pass"]

        deadline = time.monotonic() + 60
        while not passes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert passes(), "no pass event before the kill"
        pid = _redis_pid(sock)
        assert pid
        os.kill(pid, signal.SIGKILL)
        # supervised: a new redis-server answers on the same socket, with the data
        deadline = time.monotonic() + 30
        while _redis_pid(sock) in (None, pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _redis_pid(sock) not in (None, pid), "the embedded Redis was not restarted"
        assert httpx.get(api.url + "/healthz").status_code == 200
        done = wait_status(c, jid, lambda st: st in ("succeeded", "failed", "cancelled"), timeout=90)
        assert done["status"] == "succeeded", done
        assert sorted(passes()) == list(range(NUM_PASSES))  # each pass event exactly once
        assert done["passes_done"] == NUM_PASSES
    finally:
        c.close()
        api.stop()
