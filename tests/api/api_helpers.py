"""Helpers for API tests: a real uvicorn on loopback (in a thread, or as a subprocess that
can be restarted), httpx clients with tokens, and an SSE reader."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from services.settings import Settings
from tests.net import free_port, wait_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ALICE, BOB = "tok-alice", "tok-bob"
TOKENS = f"{ALICE}:alice,{BOB}:bob"


class ThreadServer:
    """uvicorn serving an app object on 127.0.0.1 in a background thread."""

    def __init__(self, app) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=2,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        # an open SSE stream must not keep this server (and its reaper, which would
        # adopt other tests' jobs in the shared Redis) alive after its test
        self.server.should_exit = True
        self.thread.join(10)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(10)
        assert not self.thread.is_alive(), "uvicorn thread did not stop"


def client_for(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


class ProcessServer:
    """``rectrain serve`` as a subprocess (so a test can kill and restart the API process)."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.env = env
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, log: Path, timeout_s: float = 30) -> "ProcessServer":
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )
        wait_port(self.port, timeout_s)
        return self

    def stop(self, sig: str = "term") -> None:
        if self.proc and self.proc.poll() is None:
            (self.proc.terminate if sig == "term" else self.proc.kill)()
            self.proc.wait(20)
        self.log.close()


def settings_env(settings: Settings) -> dict[str, str]:
    from services.launcher import settings_env as env_of

    return env_of(settings, settings.redis_url)


def read_sse(client: httpx.Client, path: str, *, headers=None, params=None, until=None, timeout=60.0):
    """Collect SSE messages (dicts with id/event/data) until ``until(msg)`` or the stream ends."""
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", path, headers=headers or {}, params=params, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        msg: dict = {}
        for line in r.iter_lines():
            if time.monotonic() > deadline:
                raise TimeoutError(f"SSE: condition not met in {timeout}s; got {out[-5:]}")
            if line == "":
                if "event" in msg or "data" in msg:
                    if "data" in msg:
                        msg["data"] = json.loads(msg["data"])
                    out.append(msg)
                    if until and until(msg):
                        return out
                msg = {}
                continue
            if line.startswith(":"):
                out.append({"comment": line})
                if until and until(out[-1]):
                    return out
                continue
            k, _, v = line.partition(":")
            msg[k] = v[1:] if v.startswith(" ") else v
    return out


def wait_status(client: httpx.Client, job_id: str, pred, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        j = client.get(f"/v1/jobs/{job_id}").json()
        if pred(j["status"]):
            return j
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {j['status']} after {timeout}s: {j.get('error')}")
        time.sleep(0.2)


TERMINAL = ("succeeded", "failed", "cancelled")
