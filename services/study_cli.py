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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.cli_common import api_client, run_client
from services.settings import ClientSettings

if TYPE_CHECKING:
    from trainer.study_search import Stages
    from trainer.study_spec import Expansion, Run


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
    if plan.get("stages"):
        print(
            f"study: {plan['arms']} fixed arms (baseline + {plan['arms'] - 1}) x {len(plan['seeds'])} seeds "
            f"{plan['seeds']}, searched and tuned in stages: up to {plan['runs']} runs of {plan['passes']} passes"
        )
    else:
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
    for line in stage_lines(plan.get("stages")):
        print(line)


def stage_lines(stages: dict[str, Any] | None) -> list[str]:
    """A staged study's plan in words: the tuning stage, each search's budget, the
    confirmation (runs at most; the study ends when its stages do)."""
    if not stages:
        return []
    out = [
        f"  staged: up to {stages['max_runs']} runs ({stages['fixed_runs']} fixed runs on the study's seeds)"
    ]
    tb = stages.get("tune_baseline")
    if tb:
        grid = ", ".join(f"{k} over {v}" for k, v in tb["grid"].items())
        out.append(
            f"  - tune the baseline first: {grid}; {tb['runs']} runs of {tb['passes']} pass(es) on tuning "
            f"seeds {tb['seeds']}, chosen on validation NE"
        )
    for s in stages.get("search") or []:
        out.append(
            f"  - search {s['variant']} {s['param']} over [{s['low']:g}, {s['high']:g}] ({s['scale']}): "
            f"{s['points']} points, {s['rounds']} rounds, {s['seeds_per_round']} new seeds a round, "
            f"budget {s['budget_runs']} runs (at most {s['max_runs_per_round']} by round); then the chosen "
            f"strength on the study's seeds {stages['confirmation_seeds']} ({s['confirm_runs']} runs)"
        )
    if stages.get("search_baseline_runs"):
        out.append(f"  - the baseline on the search seeds: {stages['search_baseline_runs']} runs")
    return out


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
            print(f"no rectrain service at {url}: running the {exp.max_runs()} runs here, one after another")
        return _run_local(exp, name, Path(args.out) if args.out else None)
    return _run_service(exp, name, args.follow)


def _service_up() -> bool:
    with api_client() as c:
        return c.health()


# ---------------------------------------------------------------------------- service


def _run_service(exp, name: str, follow: bool) -> int:
    def go() -> int:
        with api_client() as c:
            s = c.submit_study(exp.spec, name=name)
            p = s.progress
            runs = f"up to {p['planned_max']} runs in stages" if "planned_max" in p else f"{p['total']} runs"
            print(f"submitted study {s.id} ({runs}, each an ordinary job)", flush=True)
            if not follow:
                return 0
            return _follow(c, s.id)

    return run_client(go)


def _progress_line(s: dict[str, Any]) -> str:
    p = s["progress"]
    return (
        f"[{s['status']}] {p['finished']}/{p['total']} runs finished "
        f"({p['succeeded']} ok, {p['failed']} failed, {p['cancelled']} cancelled; "
        f"{p['running'] + p['starting']} running, {p['queued'] + p['unsubmitted']} waiting); "
        f"passes {p['passes_done']}/{p['passes_total']}"
        + (f"; about {s['eta_seconds'] / 60:.0f} min left" if s.get("eta_seconds") else "")
        + (f"; stage: {s['stages']['stage']}" if s.get("stages") else "")
    )


def _follow(c, study_id: str) -> int:
    from services.study_stats import format_table, format_wall_totals

    def lost(e: Exception) -> None:
        print(f"rectrain: lost the API ({e.__class__.__name__}); reconnecting...", file=sys.stderr)

    last_line = None
    try:
        for snap in c.study_events(study_id, on_reconnect=lost):
            line_out = _progress_line(snap.model_dump())
            if line_out != last_line:
                print(line_out, flush=True)
                last_line = line_out
    except KeyboardInterrupt:
        print(
            f"\nstopped following; study {study_id} keeps running (POST /v1/studies/{study_id}/cancel stops it)"
        )
        return 130
    s = c.get_study(study_id)
    print()
    print(format_table(s.results or {}))
    if s.wall_totals:
        print()
        print(format_wall_totals(s.wall_totals))
    print(
        f"\nstudy {study_id} {s.status}  (export: /v1/studies/{study_id}/export.csv; "
        f"report: /v1/studies/{study_id}/report.html)"
    )
    return 0 if s.status == "succeeded" else 1


# ---------------------------------------------------------------------------- local


def run_all(
    exp: Expansion, run_one: Callable[[Run], list[dict[str, Any]]], say: Callable[..., None] = print
) -> tuple[dict[str, list[dict[str, Any]] | None], dict[str, str], Stages | None]:
    """Run every run of a study with ``run_one(run) -> its per-pass results`` (raises
    :class:`~trainer.errors.RectrainError` when the run fails), one after another. A
    staged study (a searched range, a tuned baseline: trainer/study_search.py) runs stage
    by stage: each stage's runs, then their results decide the next. Returns the per-run
    results (None for a failed run), the failures and the stages (None: a fixed grid)."""
    from trainer.errors import RectrainError
    from trainer.study_search import next_runs

    finished: dict[str, list[dict[str, Any]] | None] = {}
    failed: dict[str, str] = {}
    st: Stages | None = None
    total = exp.max_runs()
    i = 0
    while True:
        if exp.staged:
            st = next_runs(exp, finished)
            todo = [r for r in st.runs if r.key not in finished]
            if todo:
                say(f"-- {st.stage}: {len(todo)} runs", flush=True)
        else:
            todo = [r for r in exp.runs if r.key not in finished]
        if not todo:
            break
        for run in todo:
            i += 1
            say(f"[{i}/{total}] {exp.arm_of(run).label} · seed {run.seed}", flush=True)
            try:
                finished[run.key] = run_one(run)
            except RectrainError as e:
                finished[run.key] = None
                failed[run.key] = e.message
                say(f"  failed: {e.message}", flush=True)
    return finished, failed, st


def _run_local(exp, name: str, out: Path | None) -> int:
    """Every run here, one after another on warm worker groups (one per resource shape,
    trainer/warm.py), then the same answer."""
    from services.study_stats import analyze, format_table, format_wall_totals, to_csv, wall_totals
    from trainer.study_spec import eta_seconds
    from trainer.warm import WarmPool, connect

    out = (out or Path("runs") / time.strftime("study-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_passes: dict[str, list[dict[str, Any]]] = {}
    run_walls: dict[str, dict[str, float]] = {}
    rss: dict[str, list[int]] = {}
    t0 = time.time()
    total = exp.max_runs()
    first = exp.runs[0] if exp.runs else None
    connect(exp.job_spec(first) if first is not None else exp.spec.base)
    with WarmPool() as pool:

        def run_one(run) -> list[dict[str, Any]]:
            res = pool.run(exp.job_spec(run), out / run.key.replace("/", "-"))
            passes = [p.model_dump() for p in res.passes]
            run_passes[run.key] = passes
            run_walls[run.key] = res.wall_split or {}
            rss[run.key] = res.warm.worker_rss_bytes if res.warm else []
            ne = "  ".join("-" if p.test_ne is None else f"{p.test_ne:.4f}" for p in res.passes)
            n = len(run_passes)
            left = eta_seconds(time.time() - t0, n, max(total - n, 0))
            print(
                f"  test NE by pass: {ne}   ({res.wall_seconds or 0:.1f} s, "
                f"{time.time() - t0:.0f} s so far, about {left or 0:.0f} s left)",
                flush=True,
            )
            return passes

        _, failed, st = run_all(exp, run_one)
    if st is None:
        results = analyze(
            [a.to_dict() for a in exp.arms], [r.to_dict() for r in exp.runs], run_passes, exp.passes
        )
    else:
        used = st.analysis_runs()
        results = analyze(
            [a.to_dict() for a in st.arms],
            [r.to_dict() for r in used],
            {r.key: run_passes.get(r.key, []) for r in used},
            exp.passes,
            search=st.search,
            tuned_baseline=st.tuned,
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
    if st is not None:
        doc["stages"] = st.summary()
        doc["runs"] = [{**r.to_dict(), "label": exp.arm_of(r).label} for r in st.runs]
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
            page = c.list_studies(limit=args.limit)
        print(f"{'id':<16}  {'name':<28}  {'status':<10}  {'runs':>9}  created (UTC)")
        for s in page.data:
            p = s.progress
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s.created_at))
            print(
                f"{s.id:<16}  {(s.name or '')[:28]:<28}  {s.status:<10}  "
                f"{p['finished']:>4}/{p['total']:<4}  {created}"
            )
        return 0

    return run_client(go)
