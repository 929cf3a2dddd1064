"""End to end with the real trainer on the session's real Ray cluster.

Each test trains the tiny spec for real (TorchRec + FBGEMM on Ray Train, CPU), through a
real uvicorn and the real runner process: NE streams over SSE; an API restart mid-job
loses nothing; cancel stops Ray Train; a killed trainer fails the job with the reason;
the Ray Jobs API launcher runs the same job on the cluster.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest
from api_helpers import (
    ALICE,
    TERMINAL,
    ProcessServer,
    ThreadServer,
    client_for,
    read_sse,
    settings_env,
    wait_status,
)
from test_api_basics import TINY

pytestmark = [pytest.mark.ray, pytest.mark.slow]

JOB_TIMEOUT_S = 240


@pytest.fixture
def real_settings(settings, ray_address):
    """The real trainer (``python -m trainer.cli run``) on the session Ray (local launcher)."""
    return settings.model_copy(
        update={
            "trainer_module": "trainer.cli",
            "ray_address": ray_address,
            "launcher": "local",
            "cancel_grace_s": 30.0,
            "heartbeat_ttl_s": 5.0,
            "heartbeat_interval_s": 1.0,
        }
    )


def _first_ne(m) -> bool:
    return m.get("event") == "train_window" and isinstance(m["data"].get("ne_window"), float)


def test_real_job_streams_ne_survives_an_api_restart_and_succeeds(real_settings, tmp_path):
    env = settings_env(real_settings)
    api = ProcessServer(env).start(tmp_path / "api1.log")
    c = client_for(api.url, ALICE)
    try:
        job = c.post("/v1/jobs", json={"spec": TINY, "name": "e2e"}).json()
        jid = job["id"]
        # live NE over SSE while the job runs
        first = read_sse(c, f"/v1/jobs/{jid}/events", until=_first_ne, timeout=JOB_TIMEOUT_S)
        assert c.get(f"/v1/jobs/{jid}").json()["status"] == "running"
        last_id = [m for m in first if "id" in m][-1]["id"]
        # the API process dies mid-job and comes back on the same address
        api.stop("kill")
        c.close()
        api = ProcessServer(env, port=api.port).start(tmp_path / "api2.log")
        c = client_for(api.url, ALICE)
        assert c.get(f"/v1/jobs/{jid}").json()["status"] in ("running", "succeeded")
        rest = read_sse(
            c, f"/v1/jobs/{jid}/events", headers={"Last-Event-ID": last_id}, timeout=JOB_TIMEOUT_S
        )
        assert rest[-1]["event"] == "end" and rest[-1]["data"] == {"status": "succeeded"}, rest[-3:]
        # nothing lost or repeated across the restart: first + rest == the whole stream
        streamed = [m["id"] for m in first + rest if "id" in m]
        stored = [e["id"] for e in c.get(f"/v1/jobs/{jid}/metrics", params={"limit": 1000}).json()["data"]]
        assert streamed == stored
        events = [m["data"] for m in first + rest if "id" in m]
        passes = [e for e in events if e["type"] == "pass"]
        assert [p["pass"] for p in passes] == [0, 1]
        assert all(isinstance(p["test_ne"], float) and p["test_ne"] > 0 for p in passes)
        assert set(passes[0]["test_ne_by_stratum"]) == {"frequent", "medium", "rare"}

        done = c.get(f"/v1/jobs/{jid}").json()
        assert done["status"] == "succeeded" and done["passes_done"] == 2
        results = json.loads((real_settings.data_dir / "runs" / jid / "results.json").read_text())
        for k in ("selection", "selected_pass", "last_pass", "test_ne_at_last", "oracle_test_ne"):
            want = results[k]
            assert done["summary"][k] == (pytest.approx(want) if isinstance(want, float) else want), k
        assert [p["test_ne"] for p in done["summary"]["passes"]] == pytest.approx(
            [p["test_ne"] for p in results["passes"]]
        )
    finally:
        c.close()
        api.stop()


@pytest.fixture
def real_server(real_settings):
    from api.main import create_app

    s = ThreadServer(create_app(real_settings)).start()
    yield s
    s.stop()


def _running_with_ne(c, jid):
    read_sse(c, f"/v1/jobs/{jid}/events", until=_first_ne, timeout=JOB_TIMEOUT_S)
    return c.get(f"/v1/jobs/{jid}").json()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_cancel_a_running_real_job(real_server, real_settings):
    c = client_for(real_server.url, ALICE)
    spec = {**TINY, "training": {"num_passes": 50}}
    jid = c.post("/v1/jobs", json={"spec": spec}).json()["id"]
    _running_with_ne(c, jid)
    from services.jobs import JobRecord  # noqa: F401  (the record holds the trainer pid)

    t0 = time.monotonic()
    assert c.post(f"/v1/jobs/{jid}/cancel").status_code == 202
    done = wait_status(c, jid, lambda s: s in TERMINAL, timeout=60)
    took = time.monotonic() - t0
    assert done["status"] == "cancelled", done
    assert took < 30, f"cancel took {took:.1f}s"
    log = (real_settings.data_dir / "runs" / jid / "runner.log").read_text()
    assert "cancel requested" in log
    pid = _trainer_pid(real_settings, jid)
    assert not _alive(pid)


def _field(settings, jid, name):
    import redis

    from services import keys

    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        return r.hget(keys.job_key(jid), name)
    finally:
        r.close()


def _trainer_pid(settings, jid) -> int:
    return int(_field(settings, jid, "trainer_pid"))


def test_killed_real_trainer_fails_the_job_with_the_reason(real_server, real_settings):
    c = client_for(real_server.url, ALICE)
    spec = {**TINY, "training": {"num_passes": 50}}
    jid = c.post("/v1/jobs", json={"spec": spec}).json()["id"]
    _running_with_ne(c, jid)
    os.kill(_trainer_pid(real_settings, jid), signal.SIGKILL)
    done = wait_status(c, jid, lambda s: s in TERMINAL, timeout=30)
    assert done["status"] == "failed" and "killed by SIGKILL" in done["error"], done


def test_ray_jobs_api_launcher_runs_a_real_job(settings, ray_dashboard_url):
    from api.main import create_app

    s = settings.model_copy(
        update={
            "trainer_module": "trainer.cli",
            "ray_address": ray_dashboard_url,
            "launcher": "auto",
            "ray_python": sys.executable,
            "heartbeat_ttl_s": 5.0,
            "heartbeat_interval_s": 1.0,
        }
    )
    assert s.effective_launcher == "ray"
    srv = ThreadServer(create_app(s)).start()
    c = client_for(srv.url, ALICE)
    try:
        jid = c.post("/v1/jobs", json={"spec": TINY}).json()["id"]
        first = read_sse(c, f"/v1/jobs/{jid}/events", until=_first_ne, timeout=JOB_TIMEOUT_S)
        # the runner (in an API pod, say) dies: the reaper re-attaches a new one to the Ray job
        os.kill(int(_field(s, jid, "runner_pid")), signal.SIGKILL)
        last = [m for m in first if "id" in m][-1]["id"]
        msgs = first + read_sse(
            c, f"/v1/jobs/{jid}/events", headers={"Last-Event-ID": last}, timeout=JOB_TIMEOUT_S
        )
        assert msgs[-1]["event"] == "end", msgs[-3:]
        log = (s.data_dir / "runs" / jid / "runner.log").read_text()
        assert "re-attached to Ray job" in log
        done = c.get(f"/v1/jobs/{jid}").json()
        assert done["status"] == "succeeded", done["error"]
        assert done["passes_done"] == 2 and done["summary"]["test_ne_at_last"] > 0
        assert any(m.get("event") == "train_window" for m in msgs)
        from ray.job_submission import JobSubmissionClient

        info = JobSubmissionClient(ray_dashboard_url).get_job_info(f"rectrain-{jid}")
        assert info.status.value == "SUCCEEDED" and info.metadata["rectrain_job_id"] == jid
    finally:
        c.close()
        srv.stop()
