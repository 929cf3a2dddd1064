"""Session-wide real services for the test suite.

- ``ray_address``: one real Ray head (with dashboard, so the Ray Jobs API works)
  started once per test session with ``ray start --head``; tests connect to it.
- ``redis_server`` / ``redis_url``: one real ``redis-server`` process per session
  (Debian's redis-server, installed by scripts/setup-test-tools.sh), ``redis_client``
  flushes it before each test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from services.local_ray import LOOPBACK_ARGS, LOOPBACK_ENV
from tests.net import free_port, wait_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# One auth mode for the session cluster, the pytest process and every subprocess a
# test starts (Ray 2.60 otherwise turns token auth on for whoever finds ~/.ray/auth_token).
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# every Ray a test starts (the session head, in-process ray.init(), the multi-node test
# cluster, rectrain serve's) binds and advertises 127.0.0.1 only, like serve's own head
os.environ.update(LOOPBACK_ENV)


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    """Address of a real Ray head started once for the whole session.

    ``ray start --block`` runs in its own process group, so teardown stops exactly
    this cluster (``ray stop`` would stop every Ray on the machine).
    """
    port, dash = free_port(), free_port()
    env = dict(os.environ)
    # Ray's own lookups from inside the cluster (Ray Train's placement group cleaner asks
    # the State API whether its controller lives) must reach this head, not the Ray that
    # started last on a shared machine (it would see the controller gone and remove the
    # running job's placement group)
    env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dash}"
    temp_dir = tmp_path_factory.mktemp("ray")
    ray_tmp = tempfile.mkdtemp(prefix="rt-ray-", dir="/tmp")  # short: Ray's socket paths
    log = open(temp_dir / "ray-start.log", "w")
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            *LOOPBACK_ARGS,
            "--num-cpus=4",
            "--include-dashboard=true",
            f"--dashboard-port={dash}",
            # free agent ports: Ray's fixed defaults collide with any other Ray on the box
            # (then its Jobs API never accepts a job: 'No available agent to submit job')
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            # a temp dir of its own: Ray Jobs give drivers the address in
            # <temp dir>/ray_current_cluster, which in /tmp/ray names the last Ray started
            f"--temp-dir={ray_tmp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_port(port, 90)
        wait_port(dash, 90)
        address = f"127.0.0.1:{port}"
        os.environ["RECTRAIN_TEST_RAY_DASHBOARD"] = f"http://127.0.0.1:{dash}"
        yield address
    finally:
        import signal

        # `ray start --block` took the whole 20 s it used to be given to exit on SIGTERM
        # (the session's last test paid it); nothing outlives the session, so 5 s, then KILL
        for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 20)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait_s)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_dashboard_url(ray_address) -> str:
    """The session cluster's dashboard, once its Jobs API really runs jobs (its job
    agent starts well after the port opens: 'No available agent to submit job')."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    url = os.environ["RECTRAIN_TEST_RAY_DASHBOARD"]
    deadline = time.time() + 180
    last: Exception | None = None
    while time.time() < deadline:
        try:
            client = JobSubmissionClient(url)
            job = client.submit_job(entrypoint="true")
            while time.time() < deadline:
                status = client.get_job_status(job)
                if status == JobStatus.SUCCEEDED:
                    return url
                if status in (JobStatus.FAILED, JobStatus.STOPPED):
                    raise RuntimeError(client.get_job_logs(job))
                time.sleep(0.5)
        except Exception as e:  # not ready yet
            last = e
            time.sleep(2)
    pytest.fail(f"Ray Jobs API at {url} never ran a job: {last}")


@pytest.fixture(scope="session")
def ray_session(ray_address):
    """The pytest process itself connected to the session Ray cluster."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server process on a free loopback port for the session."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server not installed: run scripts/setup-test-tools.sh")
    port = free_port()
    d = tempfile.mkdtemp(prefix="rectrain-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, 10)
        yield {"port": port, "url": f"redis://127.0.0.1:{port}/0", "proc": proc}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake_trainer_path(monkeypatch):
    """Make ``python -m fake_trainer`` (tests/services) importable in runner/trainer subprocesses."""
    from tests.control_plane import FAKE_TRAINER_DIR

    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(FAKE_TRAINER_DIR), os.environ.get("PYTHONPATH", "")])
    )


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    return redis_server["url"]


@pytest.fixture
def redis_client(redis_url):
    import redis

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.flushall()
    yield r
    r.close()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto) on loopback for the session."""
    from tests.s3 import start_s3_server

    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This test's process talks to the loopback S3 server through the standard AWS variables."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server
