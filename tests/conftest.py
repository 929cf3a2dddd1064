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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    """Address of a real Ray head started once for the whole session."""
    port, dash = free_port(), free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(VENV_BIN / "ray")
    subprocess.run(
        [ray_bin, "start", "--head", f"--port={port}", "--num-cpus=4", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats"],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    os.environ["RECTRAIN_TEST_RAY_DASHBOARD"] = f"http://127.0.0.1:{dash}"
    try:
        yield address
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def ray_dashboard_url(ray_address) -> str:
    return os.environ["RECTRAIN_TEST_RAY_DASHBOARD"]


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
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, 10)
        yield {"port": port, "url": f"redis://127.0.0.1:{port}/0", "proc": proc}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


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
