"""Servers for the tests: the API app in a uvicorn thread (:class:`ThreadServer`), and
server processes on a loopback port that a test can stop and restart on the same port
(:class:`SubprocessServer`: ``rectrain serve`` as :class:`ProcessServer`, the dashboard's
``uvicorn api.main:create_app --factory`` in tests/dashboard/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import uvicorn

from tests.net import free_port, wait_port

REPO = Path(__file__).resolve().parents[1]


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


class SubprocessServer:
    """A server process on 127.0.0.1:``port`` (its output in a log file)."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.env = env
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def wait_ready(self, timeout_s: float) -> None:
        """Until the port accepts connections (subclasses may ask for more)."""
        wait_port(self.port, timeout_s)

    def start(self, log: Path, timeout_s: float = 30) -> "SubprocessServer":
        self.log_path = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(), env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO)
            )
        self.wait_ready(timeout_s)
        return self

    def stop(self, sig: str = "term") -> None:
        """SIGTERM (``sig="kill"``: SIGKILL) and wait; SIGKILL if it does not exit."""
        if self.proc is not None and self.proc.poll() is None:
            (self.proc.terminate if sig == "term" else self.proc.kill)()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class ProcessServer(SubprocessServer):
    """``rectrain serve`` as a subprocess (so a test can kill and restart the API process).

    serve runs the API and the worker as processes of its own; :meth:`stop` returns once
    they are gone too (killed with serve, they die a moment after it: a restart on the
    same port must not find the old API still listening)."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]

    def stop(self, sig: str = "term") -> None:
        import os

        import psutil

        kids: list[psutil.Process] = []
        if self.proc is not None and self.proc.poll() is None:
            try:
                sid = os.getsid(self.proc.pid)
                # its API and worker (its Redis and Ray head run in sessions of their own)
                kids = [k for k in psutil.Process(self.proc.pid).children() if os.getsid(k.pid) == sid]
            except (psutil.Error, OSError):
                kids = []
        super().stop(sig)
        _gone, alive = psutil.wait_procs(kids, timeout=20)
        for k in alive:
            k.kill()
        psutil.wait_procs(alive, timeout=5)
