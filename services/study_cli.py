"""``rectrain study SPEC`` and ``rectrain studies``: run a study and read its answer.

``rectrain study SPEC`` validates the study and prints its size and rough cost; then it
submits it to the API at ``RECTRAIN_API_URL`` (``POST /v1/studies``; ``--follow``
streams progress and prints the answer), or, with ``--local`` or when no service
answers there, runs every run itself on local Ray (or the cluster at ``RAY_ADDRESS``)
one after another on warm worker groups (:mod:`trainer.warm`) and prints the same
answer and where the time went, writing ``study.json``, ``study.csv`` and ``report.html``
(one self-contained page) to ``--out``. ``--plan`` stops after the size and cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from services.cli_common import api_client, check_response, format_ts, run_client
from services.settings import ClientSettings


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("study", help="run a study (regularizer x strength x seed) and print its answer")
    s.add_argument("spec", help="path to a study spec (.yaml/.yml/.json)")
    s.add_argument("--name", default=None, help="display name (default: the spec's name or file name)")
    s.add_argument("--plan", action="store_true", help="only validate and print the size and rough cost")
    s.add_argument(
        "--follow", "-f", action="store_true", help="follow the study until it ends, then print the answer"
    )
    s.add_argument(
        "--local", action="store_true", help="run on local Ray (or RAY_ADDRESS) here, one run after another"
    )
    s.add_argument(
        "--out", default=None, help="--local: where runs and results go (default runs/study-<time>)"
    )
    s.set_defaults(func=_cmd_study)

    s = sub.add_parser("studies", help="list your studies")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(func=_cmd_studies)


def _print_plan(plan: dict[str, Any]) -> None:
    est = plan["estimate"]
    print(
        f"study: {plan['arms']} arms (baseline + {plan['arms'] - 1}) x {len(plan['seeds'])} seeds "
        f"{plan['seeds']} = {plan['runs']} runs of {plan['passes']} passes"
    )
    if est.get("train_examples_total") is not None:
        print(f"  {est['train_examples_total']:,} training examples in all")
    if est.get("sequential_seconds") is not None:
        print(
            f"  roughly {est['sequential_seconds'] / 60:.0f} min one run after another "
            f"(assumes {est['assumed_examples_per_s']:,.0f} examples/s and {est['assumed_run_startup_s']:.0f} s "
            "start-up per run)"
        )
    else:
        print(f"  {est['note']}")
    for a in plan["arm_list"]:
        print(f"  - {a['key']:<8} {a['label']}")


def _cmd_study(args: argparse.Namespace) -> int:
    from trainer.study_spec import load_study

    exp = load_study(args.spec)  # SpecError -> exit 2 with the field named (trainer.cli)
    plan = exp.plan()
    _print_plan(plan)
    if args.plan:
        return 0
    name = args.name or exp.spec.name or Path(args.spec).stem
    if args.local or not _service_up():
        if not args.local:
            url = ClientSettings().api_url
            print(f"no rectrain service at {url}: running the {len(exp.runs)} runs here, one after another")
        return _run_local(exp, name, Path(args.out) if args.out else None)
    return _run_service(exp, name, args.follow)


def _service_up() -> bool:
    import httpx

    url = ClientSettings().api_url.rstrip("/")
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------------- service


def _run_service(exp, name: str, follow: bool) -> int:
    body = {"spec": exp.spec.model_dump(mode="json", exclude_none=True), "name": name}

    def go() -> int:
        with api_client() as c:
            s = check_response(c.post("/v1/studies", json=body))
            print(
                f"submitted study {s['id']} ({s['progress']['total']} runs, each an ordinary job)", flush=True
            )
            if not follow:
                return 0
            return _follow(c, s["id"])

    return run_client(go)


def _progress_line(s: dict[str, Any]) -> str:
    p = s["progress"]
    return (
        f"[{s['status']}] {p['finished']}/{p['total']} runs finished "
        f"({p['succeeded']} ok, {p['failed']} failed, {p['cancelled']} cancelled; "
        f"{p['running'] + p['starting']} running, {p['queued'] + p['unsubmitted']} waiting); "
        f"passes {p['passes_done']}/{p['passes_total']}"
        + (f"; about {s['eta_seconds'] / 60:.0f} min left" if s.get("eta_seconds") else "")
    )


def _follow(c, study_id: str) -> int:
    import httpx

    from services.study_stats import format_table, format_wall_totals

    last_line = None
    down_since: float | None = None
    try:
        while True:
            try:
                with c.stream("GET", f"/v1/studies/{study_id}/events", timeout=None) as r:
                    if r.status_code >= 400:
                        r.read()
                        check_response(r)
                    down_since = None
                    event, ended = None, False
                    for line in r.iter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:") and event == "study":
                            line_out = _progress_line(json.loads(line[5:]))
                            if line_out != last_line:
                                print(line_out, flush=True)
                                last_line = line_out
                        elif line.startswith("data:") and event == "end":
                            ended = True
                            break
                    if ended:
                        break
            except httpx.TransportError as e:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > 120:
                    raise
                print(f"rectrain: lost the API ({e.__class__.__name__}); reconnecting...", file=sys.stderr)
                time.sleep(1.0)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; study {study_id} keeps running (POST /v1/studies/{study_id}/cancel stops it)"
        )
        return 130
    s = check_response(c.get(f"/v1/studies/{study_id}"))
    print()
    print(format_table(s["results"]))
    if s.get("wall_totals"):
        print()
        print(format_wall_totals(s["wall_totals"]))
    print(
        f"\nstudy {study_id} {s['status']}  (export: /v1/studies/{study_id}/export.csv; "
        f"report: /v1/studies/{study_id}/report.html)"
    )
    return 0 if s["status"] == "succeeded" else 1


# ---------------------------------------------------------------------------- local


def _run_local(exp, name: str, out: Path | None) -> int:
    """Every run here, one after another on warm worker groups (one per resource shape,
    trainer/warm.py), then the same answer."""
    from services.study_stats import analyze, format_table, format_wall_totals, to_csv, wall_totals
    from trainer.errors import RectrainError
    from trainer.study_spec import eta_seconds
    from trainer.warm import WarmPool, connect

    out = (out or Path("runs") / time.strftime("study-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_passes: dict[str, list[dict[str, Any]]] = {}
    run_walls: dict[str, dict[str, float]] = {}
    rss: dict[str, list[int]] = {}
    failed: dict[str, str] = {}
    t0 = time.time()
    connect(exp.job_spec(exp.runs[0]))
    with WarmPool() as pool:
        for i, run in enumerate(exp.runs, 1):
            arm = exp.arm(run.arm)
            print(f"[{i}/{len(exp.runs)}] {arm.label} · seed {run.seed}", flush=True)
            try:
                res = pool.run(exp.job_spec(run), out / run.key.replace("/", "-"))
            except RectrainError as e:
                failed[run.key] = e.message
                print(f"  failed: {e.message}", flush=True)
                continue
            run_passes[run.key] = res["passes"]
            run_walls[run.key] = res["wall_split"]
            rss[run.key] = res["warm"]["worker_rss_bytes"]
            ne = "  ".join("-" if p.get("test_ne") is None else f"{p['test_ne']:.4f}" for p in res["passes"])
            left = eta_seconds(time.time() - t0, i, len(exp.runs) - i)
            print(
                f"  test NE by pass: {ne}   ({res['wall_seconds']:.1f} s, "
                f"{time.time() - t0:.0f} s so far, about {left or 0:.0f} s left)",
                flush=True,
            )
    results = analyze(
        [a.to_dict() for a in exp.arms], [r.to_dict() for r in exp.runs], run_passes, exp.passes
    )
    wall = time.time() - t0
    totals = wall_totals(run_walls, wall)
    doc = {
        "name": name,
        "spec": exp.spec.model_dump(mode="json"),
        "plan": exp.plan(),
        "failed": failed,
        "run_passes": run_passes,
        "run_wall_split": run_walls,
        "wall_totals": totals,
        # each run's warm worker RSS after it (bytes; a list over the group's ranks)
        "worker_rss_bytes": rss,
        "results": results,
        "wall_seconds": wall,
    }
    (out / "study.json").write_text(json.dumps(doc, indent=1))
    (out / "study.csv").write_text(to_csv(results))
    _write_report(out, doc)
    print()
    print(format_table(results))
    print()
    print(format_wall_totals(totals))
    print(f"\nresults: {out}/study.json, {out}/study.csv, {out}/report.html")
    return 0 if not failed else 1


def _write_report(out: Path, doc: dict[str, Any]) -> Path:
    """The answer as one self-contained HTML page (services.study_report) in ``out``."""
    from services.study_report import render_report

    path = out / "report.html"
    path.write_text(render_report(doc), encoding="utf-8")
    return path


def _cmd_studies(args: argparse.Namespace) -> int:
    def go() -> int:
        with api_client() as c:
            page = check_response(c.get("/v1/studies", params={"limit": args.limit}))
        print(f"{'id':<16}  {'name':<28}  {'status':<10}  {'runs':>9}  created (UTC)")
        for s in page["data"]:
            p = s["progress"]
            created = format_ts(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s["created_at"])))
            print(
                f"{s['id']:<16}  {(s['name'] or '')[:28]:<28}  {s['status']:<10}  "
                f"{p['finished']:>4}/{p['total']:<4}  {created}"
            )
        return 0

    return run_client(go)
