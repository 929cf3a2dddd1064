"""``rectrain serve | worker | submit | jobs | cancel | follow`` (and ``study | studies``,
in services/study_cli.py): the control plane's commands.

``serve`` runs the API and a worker (services/worker.py: dispatcher, reaper, study
reconciler), each a process of its own, plus an embedded Redis when REDIS_URL is unset
and, when RAY_ADDRESS is unset, one local Ray head it owns, on which every job runs
through the Ray Jobs API; Ctrl-C or SIGTERM stops them all. ``worker`` runs the control
loops alone (a split deployment's API runs with RECTRAIN_CONTROL_LOOPS=off). The others are thin REST clients of the API at
``RECTRAIN_API_URL`` (default http://127.0.0.1:8000) with the token ``RECTRAIN_TOKEN``
(default: the development token ``rectrain serve`` prints).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from services.cli_common import api_client as _client
from services.cli_common import format_ts as _ts
from services.cli_common import run_client as _run_client

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


_FOLLOW_RECONNECT_FOR_S = 120.0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="run the API and a worker (embedded Redis and a local Ray head by default), "
        "each a process of its own; Ctrl-C or SIGTERM stops them all",
    )
    s.add_argument("--host", default=None, help="default: RECTRAIN_API_HOST (127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="default: RECTRAIN_API_PORT (8000)")
    s.add_argument("--log-level", default="info")
    s.add_argument(
        "--loops",
        choices=("worker", "in-process", "off"),
        default="worker",
        help="where the control loops (dispatcher, reaper, study reconciler) run: worker (a "
        "`rectrain worker` process beside the API; default), in-process (in the API process), "
        "off (not here: API replicas of a split deployment, whose worker runs elsewhere)",
    )
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser(
        "worker",
        help="run the control loops (dispatcher, reaper, study reconciler) against REDIS_URL "
        "and the Ray settings, for APIs with RECTRAIN_CONTROL_LOOPS=off",
    )
    s.set_defaults(func=_cmd_worker)

    s = sub.add_parser("submit", help="submit a job spec (YAML/JSON) to the API")
    s.add_argument("spec", help="path to a job spec (.yaml/.yml/.json)")
    s.add_argument("--name", default=None, help="display name (default: the file name)")
    s.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    s.add_argument("--priority", type=int, default=0, help="higher starts first among your queued jobs")
    s.add_argument("--follow", "-f", action="store_true", help="stream NE live until the job ends")
    s.set_defaults(func=_cmd_submit)

    s = sub.add_parser("jobs", help="list your jobs")
    s.add_argument("--status", default=None, help="only jobs in this status")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--json", action="store_true", help="print the API's JSON")
    s.set_defaults(func=_cmd_jobs)

    s = sub.add_parser("cancel", help="cancel a job")
    s.add_argument("id")
    s.set_defaults(func=_cmd_cancel)

    s = sub.add_parser("follow", help="stream a job's NE live until it ends")
    s.add_argument("id")
    s.set_defaults(func=_cmd_follow)

    s = sub.add_parser(
        "export", help="write a job's or run directory's model as one file (see docs/model-format.md)"
    )
    s.add_argument("source", help="a job id (downloaded from the API) or a run directory / job storage URI")
    s.add_argument(
        "--pass", dest="pass_", type=int, default=None, help="0-based pass (default: the selected)"
    )
    s.add_argument("--out", required=True, help="where to write the model file")
    s.set_defaults(func=_cmd_export)

    from services.study_cli import register as register_study

    register_study(sub)


# ---------------------------------------------------------------------------- serve


def _cmd_serve(args: argparse.Namespace) -> int:
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
                # warm study runs join the head as Ray drivers (services.launcher.WarmBackend)
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


def _cmd_worker(args: argparse.Namespace) -> int:  # noqa: ARG001
    from services.worker import main

    return main()


# ---------------------------------------------------------------------------- client


def _load(path: str) -> dict:
    import yaml

    from trainer.errors import SpecError

    p = Path(path)
    if not p.exists():
        raise SpecError(f"spec file {p} does not exist")
    try:
        data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (ValueError, yaml.YAMLError) as e:
        raise SpecError(f"spec file {p} is not valid: {e}") from None
    return data or {}


def _cmd_submit(args: argparse.Namespace) -> int:
    labels = {}
    for kv in args.label:
        k, sep, v = kv.partition("=")
        if not sep:
            print(f"rectrain: --label {kv!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        labels[k] = v
    spec = _load(args.spec)

    def go() -> int:
        with _client() as c:
            job = c.submit_job(
                spec, name=args.name or Path(args.spec).stem, labels=labels, priority=args.priority
            )
            pos = f", #{job.queue_position} in the queue" if job.queue_position else ""
            print(f"submitted job {job.id} ({job.status}{pos})", flush=True)
            if not args.follow:
                return 0
            return _follow(c, job.id)

    return _run_client(go)


def _cmd_follow(args: argparse.Namespace) -> int:
    def go() -> int:
        with _client() as c:
            return _follow(c, args.id)

    return _run_client(go)


def _print_event(ev: dict) -> None:
    from trainer.metrics.events import StdoutSink

    if ev.get("type") == "status":
        extra = f": {ev['error']}" if ev.get("error") else ""
        print(f"[status] {ev.get('status')}{extra}", flush=True)
        return
    try:
        StdoutSink().emit(ev)
    except (KeyError, TypeError, ValueError):
        pass


def _follow(c, job_id: str) -> int:
    """Print the job's events as they stream; reconnect (resuming) if the API goes away."""
    from trainer.report import format_pass_table

    def lost(e: Exception) -> None:
        print(f"rectrain: lost the API ({e.__class__.__name__}); reconnecting...", file=sys.stderr)

    try:
        for ev in c.job_events(job_id, reconnect_for_s=_FOLLOW_RECONNECT_FOR_S, on_reconnect=lost):
            _print_event(ev.data)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running (`rectrain cancel {job_id}` stops it)")
        return 130
    job = c.get_job(job_id)
    if job.summary.passes:
        print()
        print(format_pass_table(job.summary))
    print(f"\njob {job_id} {job.status}" + (f": {job.error}" if job.error else ""))
    return 0 if job.status == "succeeded" else 1


def _cmd_jobs(args: argparse.Namespace) -> int:
    def go() -> int:
        with _client() as c:
            page = c.list_jobs(status=args.status, limit=args.limit)
        if args.json:
            print(json.dumps(page.model_dump(mode="json"), indent=1))
            return 0
        # headline: test NE at the pass selected by validation NE; without validation
        # data nothing is selected: "no val data" and the last pass's test NE
        print(
            f"{'id':<16}  {'name':<20}  {'status':<9}  {'queue':>5}  {'passes':>6}  {'selected':>11}  "
            f"{'test NE':>7}  {'oracle':>6}  created (UTC)"
        )
        waiting = []
        for j in page.data:
            s = j.summary
            sel, oracle = s.selected_pass, s.oracle_test_ne
            if sel is not None:
                sel_txt, ne = f"pass {sel + 1}", s.test_ne_at_selected
            elif s.last_pass is not None:
                sel_txt, ne = "no val data", s.test_ne_at_last
            else:
                sel_txt, ne = "-", None
            pos = j.queue_position
            print(
                f"{j.id:<16}  {(j.name or '')[:20]:<20}  {j.status:<9}  "
                f"{'' if pos is None else f'#{pos}':>5}  "
                f"{j.passes_done:>2}/{j.num_passes:<3}  {sel_txt:>11}  "
                f"{'-' if ne is None else f'{ne:.4f}':>7}  {'-' if oracle is None else f'{oracle:.4f}':>6}  "
                f"{_ts(j.created_at)}"
            )
            if j.status == "queued" and j.wait_reason:
                waiting.append(f"  {j.id}  #{pos if pos is not None else '?'}: {j.wait_reason}")
        if waiting:
            print("queued:")
            print("\n".join(waiting))
        if page.count > len(page.data):
            print(f"({len(page.data)} of {page.count})")
        return 0

    return _run_client(go)


def _cmd_cancel(args: argparse.Namespace) -> int:
    def go() -> int:
        with _client() as c:
            job = c.cancel_job(args.id)
        state = job.status if job.status == "cancelled" else f"{job.status}, cancel requested"
        print(f"job {job.id}: {state}")
        return 0

    return _run_client(go)


# ---------------------------------------------------------------------------- export


def _cmd_export(args: argparse.Namespace) -> int:
    import re

    from trainer import storage

    src = args.source
    if re.fullmatch(r"[0-9a-f]{16}", src) and not storage.exists(src):
        return _download_model(src, args.pass_, args.out)
    from trainer.export import export_model

    info = export_model(src, args.out, pass_=args.pass_)
    _print_export(info, args.out)
    return 0


def _print_export(info: dict, out: str) -> None:
    m = info.get("metrics") or {}
    ne = f", test NE {m['test_ne']:.4f}" if m.get("test_ne") is not None else ""
    at = info.get("pass")
    shown = f"pass {at} (0-based; pass {at + 1} in the table)" if at is not None else "the checkpoint"
    print(f"model of {shown}{ne}: {out}")


def _download_model(job_id: str, pass_: int | None, out: str) -> int:
    def go() -> int:
        with _client() as c:
            at = c.download_model(job_id, out, pass_=pass_)
        print(f"model of job {job_id} (pass {at if at >= 0 else '?'}): {out}")
        return 0

    return _run_client(go)
