"""``rectrain serve``: the embedded default bring-up, and how the API runs as a process.

``serve`` runs the API (uvicorn, :func:`api_command`) and a worker (services/worker.py:
dispatcher, reaper, study reconciler), each a process of its own, plus an embedded Redis
when REDIS_URL is unset (kept up: restarted from its append-only file when it stops
answering) and, when RAY_ADDRESS is unset, one local Ray head it owns
(services/local_ray.py), on which every job runs through the Ray Jobs API. Ctrl-C or
SIGTERM stops them all, in order. Its arguments are parsed in services/cli.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# the API as uvicorn loads it (an import string: workers and reload need one)
APP_FACTORY = "api.main:create_app"


def api_command(port: int, *options: str, host: str = "127.0.0.1") -> list[str]:
    """``python -m uvicorn`` serving the API factory on ``host:port`` in a process of its
    own (tests and benchmarks that need a real server process), plus uvicorn ``options``."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        APP_FACTORY,
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        *options,
    ]


def cmd_serve(args: argparse.Namespace) -> int:
    from services.logs import setup_logging
    from services.settings import Settings, env_var, settings_or_errors

    setup_logging()
    settings = settings_or_errors("serve")
    if settings is None:
        return 2
    embedded = None
    if not settings.redis_url:
        # one embedded Redis for the API and the worker, owned (and restarted) by serve
        from services.redis_conn import EmbeddedRedis

        embedded = EmbeddedRedis(settings.data_dir)
        try:
            os.environ[env_var(Settings, "redis_url")] = embedded.start()
        except (OSError, RuntimeError) as e:
            print(f"rectrain serve: could not start the embedded Redis: {e}", file=sys.stderr)
            return 1
    head = None
    try:
        if settings.launcher == "auto" and not settings.ray_address:
            # the embedded default: one long-lived local Ray head for every job
            from services.local_ray import LocalRayHead, reclaim_orphan

            data_dir = Path(settings.data_dir).resolve()
            record = data_dir / "ray-head.json"
            try:
                reclaimed = reclaim_orphan(record)  # a head a SIGKILLed serve left running
            except RuntimeError as e:
                print(f"rectrain serve: {e}", file=sys.stderr)
                return 1
            if reclaimed:
                print(reclaimed, flush=True)
            head = LocalRayHead(data_dir / "ray-head.log", nice=settings.trainer_nice, record=record)
            print(f"starting a local Ray head for the jobs (log: {head.log_path}) ...", flush=True)
            try:
                os.environ[env_var(Settings, "ray_address")] = head.start()
                # warm study runs join the head as Ray drivers (services.warm_backend.WarmBackend)
                os.environ[env_var(Settings, "ray_gcs_address")] = head.address
            except (OSError, RuntimeError) as e:
                print(f"rectrain serve: could not start a local Ray: {e}", file=sys.stderr)
                return 1
            os.environ.setdefault(env_var(Settings, "ray_python"), sys.executable)
        settings = Settings()
        return _serve(args, settings, head, embedded)
    finally:
        if head is not None:
            print("stopping the local Ray head", flush=True)
            head.stop()
        if embedded is not None and embedded.proc is not None:
            print("stopping the embedded Redis", flush=True)
            embedded.stop()


def _die_with_parent() -> None:
    """In a child of serve, before exec: SIGKILL when serve dies (even by SIGKILL), so
    no API or worker outlives it (Linux; elsewhere serve's own shutdown must do)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


class _Children:
    """serve's processes: the API (uvicorn) and the worker, each in a process group of
    its own (Ctrl-C reaches serve, which stops them in order, not all at once)."""

    def __init__(self) -> None:
        import subprocess

        self._subprocess = subprocess
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.procs[name] = self._subprocess.Popen(
            cmd, env=env, process_group=0, preexec_fn=_die_with_parent, stdin=self._subprocess.DEVNULL
        )

    def exited(self) -> tuple[str, int] | None:
        for name, p in self.procs.items():
            rc = p.poll()
            if rc is not None:
                return name, rc
        return None

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to each (the API drains its requests, the worker gives up its lease),
        then SIGKILL whatever is still there after ``grace_s``."""
        import signal as _signal

        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(_signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for name, p in self.procs.items():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except self._subprocess.TimeoutExpired:
                print(f"rectrain serve: the {name} process did not stop; killing it", file=sys.stderr)
                p.kill()
                p.wait(5)


def _serve(args: argparse.Namespace, settings, head, embedded) -> int:
    import signal

    from services.settings import DEV_TOKEN, Settings, env_var

    bind = args.host or settings.api_host
    port = args.port or settings.api_port
    host = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    loops = args.loops
    print(f"rectrain API on http://{host}:{port}  (dashboard: /, docs: /docs)")
    if settings.uses_dev_token:
        print(f"dev token: {DEV_TOKEN}  (owner 'dev'; set RECTRAIN_API_TOKENS to use your own)")
        if bind not in ("127.0.0.1", "localhost", "::1"):
            print("warning: the dev token is public; do not expose this port", file=sys.stderr)
    else:
        print(f"tokens: {len(settings.tokens)} from RECTRAIN_API_TOKENS")
    where = "embedded, data in " + str(Path(settings.data_dir).resolve()) if embedded else settings.redis_url
    print(f"redis: {where}")
    print(
        f"launcher: {settings.effective_launcher}"
        + (f" (Ray Jobs API at {settings.ray_address})" if settings.effective_launcher == "ray" else "")
        + (f"; local Ray head owned by this process at {head.address}" if head else ""),
        flush=True,
    )
    print(
        {
            "worker": "control loops: a rectrain worker process beside the API",
            "in-process": "control loops: in the API process",
            "off": "control loops: none here (a rectrain worker elsewhere runs them)",
        }[loops],
        flush=True,
    )
    stop = {"signal": None}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    env = dict(os.environ)
    env[env_var(Settings, "control_loops")] = "in-process" if loops == "in-process" else "off"
    children = _Children()
    code = 0
    try:
        children.start(
            "API",
            api_command(port, "--log-level", args.log_level, "--timeout-graceful-shutdown", "5", host=bind),
            env,
        )
        if loops == "worker":
            children.start("worker", [sys.executable, "-m", "services.worker"], env)
        last_ping = time.monotonic()
        while stop["signal"] is None:
            gone = children.exited()
            if gone is not None:
                print(f"rectrain serve: the {gone[0]} process exited ({gone[1]}); stopping", file=sys.stderr)
                code = 1
                break
            if embedded is not None and time.monotonic() - last_ping > 1.0:
                last_ping = time.monotonic()
                _keep_redis_up(embedded)
            time.sleep(0.1)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping the API" + (" and the worker" if loops == "worker" else ""), flush=True)
        children.stop()
    return code


def _keep_redis_up(embedded) -> None:
    """Restart the embedded Redis (from its append-only file) when it stops answering."""
    from services.redis_conn import RedisSupervisor

    if embedded._ping():
        return
    print("rectrain serve: the embedded Redis does not answer; restarting it", file=sys.stderr, flush=True)
    try:
        RedisSupervisor(embedded).restart()
    except (OSError, RuntimeError) as e:
        print(f"rectrain serve: could not restart the embedded Redis: {e}", file=sys.stderr, flush=True)
