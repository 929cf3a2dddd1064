"""``rectrain serve | worker | submit | jobs | cancel | follow`` (and ``study | studies``,
in services/study_cli.py): the control plane's commands.

``serve`` runs the API and a worker (services/worker.py: dispatcher, reaper, study
reconciler), each a process of its own, plus an embedded Redis when REDIS_URL is unset
and, when RAY_ADDRESS is unset, one local Ray head it owns, on which every job runs
through the Ray Jobs API; Ctrl-C or SIGTERM stops them all (that bring-up is
services/serve.py; its arguments are parsed here). ``worker`` runs the control loops
alone (a split deployment's API runs with RECTRAIN_CONTROL_LOOPS=off). The others are
thin REST clients of the API at ``RECTRAIN_API_URL`` (default http://127.0.0.1:8000)
with the token ``RECTRAIN_TOKEN`` (default: the development token ``rectrain serve``
prints).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.cli_common import api_client as _client
from services.cli_common import format_ts as _ts
from services.cli_common import run_client as _run_client
from services.serve import api_command as api_command  # re-exported (the old home)
from services.serve import cmd_serve

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
    s.set_defaults(func=cmd_serve)

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
