"""Study statistics: paired differences against the same-seed baseline, with t-intervals.

For every arm, pass count k and metric, each seed s gives
``Δ_s = NE(arm, seed s, after k passes) − NE(baseline, seed s, after k passes)``; the
study reports the mean Δ over the seeds both runs finished, a 95% Student-t interval
``mean ± t(0.975, n−1) · sd/√n`` (``scipy.stats.t``), and how many seeds favour the arm
(Δ < 0: lower NE is better). Pairing by seed removes the part of the seed noise the two
runs share (same init stream, same data order). With one seed there is no interval,
and the result says so. docs/studies.md explains the choice (t-interval, not bootstrap).

Also: the same per frequency stratum (frequent / medium / rare) for test and
validation NE; the pass each run's validation NE selects (lowest validation NE, the
earliest on ties) and the test NE there; strength curves (Δ vs a grid parameter per
pass); one answer sentence per pass count. Input is plain data (per-run per-pass
dicts, as in the jobs' ``pass`` events), so this module needs no Redis.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np
from scipy import stats

STRATA = ("frequent", "medium", "rare")
CONFIDENCE = 0.95
ONE_SEED_NOTE = "one seed: no confidence interval (add seeds to tell a difference from seed noise)"


def _num(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def t_interval(
    values: list[float] | np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``values``; None with fewer than two values."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2:
        return None
    mean = float(x.mean())
    se = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    return mean - half, mean + half


def paired_delta(arm: dict[int, float | None], baseline: dict[int, float | None]) -> dict[str, Any] | None:
    """Mean Δ = arm − baseline over the seeds both have, its 95% t-interval, seeds favouring.

    Returns None when no seed has both values.
    """
    seeds = sorted(s for s in arm if _num(arm.get(s)) is not None and _num(baseline.get(s)) is not None)
    if not seeds:
        return None
    d = np.array([arm[s] - baseline[s] for s in seeds], dtype=np.float64)  # type: ignore[operator]
    ci = t_interval(d)
    out: dict[str, Any] = {
        "n": len(seeds),
        "seeds": seeds,
        "mean": float(d.mean()),
        "sd": float(d.std(ddof=1)) if d.size > 1 else None,
        "ci_low": ci[0] if ci else None,
        "ci_high": ci[1] if ci else None,
        "favouring": int((d < 0).sum()),
        "per_seed": [float(x) for x in d],
        "excludes_zero": bool(ci and (ci[1] < 0 or ci[0] > 0)),
    }
    if ci is None:
        out["note"] = ONE_SEED_NOTE
    return out


def _mean(vals: list[float | None]) -> float | None:
    xs = [v for v in (_num(x) for x in vals) if v is not None]
    return float(np.mean(xs)) if xs else None


def selected_pass(passes: list[dict[str, Any]], upto: int | None = None) -> int | None:
    """0-based pass with the lowest validation NE among passes < ``upto`` (earliest on ties)."""
    best: tuple[float, int] | None = None
    for p in passes:
        i = p.get("pass")
        v = _num(p.get("val_ne"))
        if i is None or v is None or (upto is not None and i >= upto):
            continue
        if best is None or (v, i) < best:
            best = (v, i)
    return None if best is None else best[1]


def _by_pass(passes: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(p["pass"]): p for p in passes if isinstance(p.get("pass"), int)}


def _metric(p: dict[str, Any] | None, metric: str, stratum: str | None = None) -> float | None:
    if p is None:
        return None
    if stratum is None:
        return _num(p.get(metric))
    by = p.get(f"{metric}_by_stratum") or {}
    return _num(by.get(stratum)) if isinstance(by, dict) else None


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def analyze(
    arms: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    run_passes: dict[str, list[dict[str, Any]]],
    num_passes: int,
    run_summaries: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The study's answer.

    Args:
        arms: ``Arm.to_dict()`` of every arm (the baseline first).
        runs: ``{"key", "arm", "seed"}`` of every run.
        run_passes: run key -> its per-pass results (``pass`` events: ``pass`` 0-based,
            ``test_ne``, ``val_ne``, ``*_by_stratum``, ``oracle_*``); missing fields allowed.
        num_passes: passes every run trains.
        run_summaries: run key -> job summary (may hold ``selected_pass`` /
            ``test_ne_at_selected`` from the trainer; used when present).
    """
    run_summaries = run_summaries or {}
    by_arm: dict[str, dict[int, dict[int, dict[str, Any]]]] = {a["key"]: {} for a in arms}
    for r in runs:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = _by_pass(run_passes.get(r["key"], []))
    base_key = next(a["key"] for a in arms if a.get("is_baseline"))
    base = by_arm.get(base_key, {})
    seeds_all = sorted({r["seed"] for r in runs})
    has_val = any(_num(p.get("val_ne")) is not None for ps in run_passes.values() for p in ps)

    def values(arm_key: str, k: int, metric: str, stratum: str | None = None) -> dict[int, float | None]:
        return {s: _metric(ps.get(k - 1), metric, stratum) for s, ps in by_arm.get(arm_key, {}).items()}

    per_pass = []
    for k in range(1, num_passes + 1):
        rows = []
        for a in arms:
            row: dict[str, Any] = {"arm": a["key"], "label": a["label"]}
            for metric in ("test_ne", "val_ne"):
                vals = values(a["key"], k, metric)
                row[f"mean_{metric}"] = _mean(list(vals.values()))
                row[f"n_{metric}"] = sum(1 for v in vals.values() if _num(v) is not None)
                if not a.get("is_baseline"):
                    row[f"delta_{metric}"] = paired_delta(vals, values(base_key, k, metric))
            strata: dict[str, Any] = {}
            for metric in ("test_ne", "val_ne"):
                for st in STRATA:
                    vals = values(a["key"], k, metric, st)
                    if not any(_num(v) is not None for v in vals.values()):
                        continue
                    cell: dict[str, Any] = {"mean": _mean(list(vals.values()))}
                    if not a.get("is_baseline"):
                        cell["delta"] = paired_delta(vals, values(base_key, k, metric, st))
                    strata.setdefault(metric, {})[st] = cell
            row["strata"] = strata
            rows.append(row)
        oracle = _mean([ps.get(k - 1, {}).get("oracle_test_ne") for ps in base.values()]) if base else None
        per_pass.append(
            {
                "pass": k,
                "arms": rows,
                "oracle_test_ne": oracle,
                "sentence": answer_sentence(k, rows, len(seeds_all)),
            }
        )

    selected = []
    for a in arms:
        chosen: dict[int, int | None] = {}
        test_at: dict[int, float | None] = {}
        for s, ps in by_arm.get(a["key"], {}).items():
            summ = run_summaries.get(f"{a['key']}/s{s}", {})
            sp = summ.get("selected_pass") if isinstance(summ.get("selected_pass"), int) else None
            if sp is None:
                sp = selected_pass(list(ps.values()))
            chosen[s] = sp
            at = _num(summ.get("test_ne_at_selected"))
            test_at[s] = (
                at if at is not None else (_metric(ps.get(sp), "test_ne") if sp is not None else None)
            )
        row = {
            "arm": a["key"],
            "label": a["label"],
            "selected_pass_per_seed": {
                str(s): (None if p is None else p + 1) for s, p in sorted(chosen.items())
            },
            "mean_test_ne_at_selected": _mean(list(test_at.values())),
        }
        if not a.get("is_baseline"):
            base_at = {}
            for s, ps in base.items():
                summ = run_summaries.get(f"{base_key}/s{s}", {})
                at = _num(summ.get("test_ne_at_selected"))
                if at is None:
                    sp = summ.get("selected_pass") if isinstance(summ.get("selected_pass"), int) else None
                    sp = selected_pass(list(ps.values())) if sp is None else sp
                    at = _metric(ps.get(sp), "test_ne") if sp is not None else None
                base_at[s] = at
            row["delta_test_ne_at_selected"] = paired_delta(test_at, base_at)
        selected.append(row)

    notes = []
    if len(seeds_all) < 2:
        notes.append(ONE_SEED_NOTE)
    if not has_val:
        notes.append(
            "no validation NE in the runs' results (no validation days, or a trainer that does not "
            "report val_ne): the validation-selected pass is not available"
        )
    return {
        "baseline": base_key,
        "seeds": seeds_all,
        "passes": num_passes,
        "confidence": CONFIDENCE,
        "per_pass": per_pass,
        "selected": selected,
        "curves": strength_curves(arms, per_pass),
        "notes": notes,
    }


def strength_curves(arms: list[dict[str, Any]], per_pass: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each variant with a numeric grid: Δ test NE vs the parameter, per pass.

    With several grid parameters in one variant, one curve per parameter for each
    setting of the others.
    """
    curves = []
    by_variant: dict[int, list[dict[str, Any]]] = {}
    for a in arms:
        if not a.get("is_baseline") and a.get("params"):
            by_variant.setdefault(a["variant_index"], []).append(a)
    rows_by = {(pp["pass"], r["arm"]): r for pp in per_pass for r in pp["arms"]}
    for _vi, vas in sorted(by_variant.items()):
        names = list(vas[0]["params"])
        for param in names:
            if not all(_num(a["params"].get(param)) is not None for a in vas):
                continue  # list-valued alternatives (lr_schedule.sparse): no axis
            groups: dict[str, list[dict[str, Any]]] = {}
            for a in vas:
                rest = {k: v for k, v in a["params"].items() if k != param}
                groups.setdefault(_fmt_params(rest), []).append(a)
            for others, group in groups.items():
                if len(group) < 2:
                    continue
                members = sorted(group, key=lambda a: a["params"][param])
                points = []
                for a in members:
                    pts = []
                    for pp in per_pass:
                        d = rows_by[(pp["pass"], a["key"])].get("delta_test_ne")
                        pts.append(
                            {
                                "pass": pp["pass"],
                                "mean": d["mean"] if d else None,
                                "ci_low": d["ci_low"] if d else None,
                                "ci_high": d["ci_high"] if d else None,
                            }
                        )
                    points.append({"value": a["params"][param], "arm": a["key"], "per_pass": pts})
                curves.append(
                    {"variant": members[0]["variant"], "param": param, "others": others, "points": points}
                )
    return curves


def _d(x: float) -> str:
    return f"{abs(x):.4f}"


def answer_sentence(k: int, rows: list[dict[str, Any]], n_seeds: int) -> str:
    """One sentence: which arms beat (or lose to) the baseline after k passes, by how much."""
    head = f"After {k} pass{'es' if k > 1 else ''}"
    deltas: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (r, r["delta_test_ne"]) for r in rows if r.get("delta_test_ne")
    ]
    if not deltas:
        return f"{head}: no paired results yet."
    if all(d["ci_low"] is None for _, d in deltas):
        r, d = min(deltas, key=lambda t: t[1]["mean"])
        word = "lowest" if d["mean"] < 0 else "least bad"
        return (
            f"{head} (one seed, so no intervals): the {word} test NE vs the baseline is {r['label']} "
            f"({'−' if d['mean'] < 0 else '+'}{_d(d['mean'])}); add seeds to tell it from seed noise."
        )
    better = sorted(
        [(r, d) for r, d in deltas if d["ci_high"] is not None and d["ci_high"] < 0],
        key=lambda t: t[1]["mean"],
    )
    worse = [(r, d) for r, d in deltas if d["ci_low"] is not None and d["ci_low"] > 0]
    parts = []
    if better:
        parts.append(
            "beats the baseline: "
            + "; ".join(
                f"{r['label']} by {_d(d['mean'])} NE (95% CI {_d(d['ci_high'])}–{_d(d['ci_low'])}, "
                f"{d['favouring']}/{d['n']} seeds)"
                for r, d in better
            )
        )
    else:
        parts.append("no variant beats the baseline with a 95% interval that excludes 0")
    if worse:
        parts.append(
            "worse than the baseline: " + ", ".join(f"{r['label']} (+{_d(d['mean'])})" for r, d in worse)
        )
    return f"{head}: " + "; ".join(parts) + "."


# --------------------------------------------------------------------------- export


CSV_COLUMNS = [
    "pass",
    "arm",
    "label",
    "mean_test_ne",
    "delta_test_ne",
    "ci_low",
    "ci_high",
    "seeds",
    "seeds_favouring",
    "mean_val_ne",
    "delta_val_ne",
    "val_ci_low",
    "val_ci_high",
] + [
    f"{m}_{s}_{c}"
    for m in ("test_ne", "val_ne")
    for s in STRATA
    for c in ("mean", "delta", "ci_low", "ci_high")
]


def to_csv(results: dict[str, Any]) -> str:
    """One row per (pass count, arm): means, paired Δ and intervals, per stratum too."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for pp in results.get("per_pass", []):
        for r in pp["arms"]:
            d = r.get("delta_test_ne") or {}
            dv = r.get("delta_val_ne") or {}
            row = {
                "pass": pp["pass"],
                "arm": r["arm"],
                "label": r["label"],
                "mean_test_ne": r.get("mean_test_ne"),
                "delta_test_ne": d.get("mean"),
                "ci_low": d.get("ci_low"),
                "ci_high": d.get("ci_high"),
                "seeds": d.get("n", r.get("n_test_ne")),
                "seeds_favouring": d.get("favouring"),
                "mean_val_ne": r.get("mean_val_ne"),
                "delta_val_ne": dv.get("mean"),
                "val_ci_low": dv.get("ci_low"),
                "val_ci_high": dv.get("ci_high"),
            }
            for m, cells in (r.get("strata") or {}).items():
                for st, cell in cells.items():
                    sd = cell.get("delta") or {}
                    row[f"{m}_{st}_mean"] = cell.get("mean")
                    row[f"{m}_{st}_delta"] = sd.get("mean")
                    row[f"{m}_{st}_ci_low"] = sd.get("ci_low")
                    row[f"{m}_{st}_ci_high"] = sd.get("ci_high")
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def format_table(results: dict[str, Any]) -> str:
    """The answer as text: per pass count, each arm's mean test NE and Δ with its interval."""
    lines = []
    for pp in results.get("per_pass", []):
        lines.append(
            f"after {pp['pass']} pass(es)"
            + (f"   oracle test NE {pp['oracle_test_ne']:.4f}" if pp.get("oracle_test_ne") else "")
        )
        lines.append(f"  {'arm':<36} {'test NE':>8} {'Δ vs base':>10} {'95% CI':>21} {'seeds':>6}")
        for r in pp["arms"]:
            d = r.get("delta_test_ne")
            ne = r.get("mean_test_ne")
            ci = "–" if not d or d["ci_low"] is None else f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
            ne_s = "-" if ne is None else f"{ne:.4f}"
            d_s = "baseline" if d is None else f"{d['mean']:+.4f}"
            n_s = "" if not d else f"{d['favouring']}/{d['n']}"
            lines.append(f"  {r['label'][:36]:<36} {ne_s:>8} {d_s:>10} {ci:>21} {n_s:>6}")
        lines.append("  " + pp["sentence"])
        lines.append("")
    sel = [r for r in results.get("selected", []) if r.get("mean_test_ne_at_selected") is not None]
    if sel:
        lines.append("at the pass validation NE selects (per run)")
        lines.append(f"  {'arm':<36} {'test NE':>8} {'Δ vs base':>10} {'95% CI':>21} {'passes':>10}")
        for r in sel:
            d = r.get("delta_test_ne_at_selected")
            ci = "–" if not d or d["ci_low"] is None else f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
            d_s = "baseline" if d is None else f"{d['mean']:+.4f}"
            chosen = ",".join("-" if p is None else str(p) for p in r["selected_pass_per_seed"].values())
            lines.append(
                f"  {r['label'][:36]:<36} {r['mean_test_ne_at_selected']:>8.4f} {d_s:>10} {ci:>21} {chosen:>10}"
            )
        lines.append("")
    for n in results.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines).rstrip()


def _md_delta(d: dict[str, Any] | None, ne: float | None) -> str:
    """One cell: mean Δ and its interval (bold when the interval excludes 0)."""
    if d is None:
        return "–" if ne is None else f"{ne:.4f}"
    if d.get("ci_low") is None:
        return f"{d['mean']:+.4f}"
    cell = f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] {d['favouring']}/{d['n']}"
    return f"**{cell}**" if d["ci_high"] < 0 or d["ci_low"] > 0 else cell


def to_markdown(results: dict[str, Any]) -> str:
    """The answer as one Markdown table (for docs and reports): a row per arm; per pass
    count the paired Δ test NE vs the same-seed baseline with its 95% interval and the
    seeds favouring the arm (bold: the interval excludes 0), then the same at the pass
    validation NE selects; the baseline row holds its mean test NE. A second table: each
    arm's mean test NE by pass. Then one answer sentence per pass count and the notes."""
    per_pass = results.get("per_pass", [])
    if not per_pass:
        return "(no results)"
    selected = {r["arm"]: r for r in results.get("selected", [])}
    with_sel = any(r.get("mean_test_ne_at_selected") is not None for r in selected.values())
    head = ["arm"] + [
        f"{pp['pass']} pass{'es' if pp['pass'] > 1 else ''}: Δ test NE [95% CI] seeds" for pp in per_pass
    ]
    if with_sel:
        head.append("at the validation-selected pass")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, arm in enumerate(per_pass[0]["arms"]):
        cells = [arm["label"]]
        for pp in per_pass:
            row = pp["arms"][i]
            cells.append(_md_delta(row.get("delta_test_ne"), row.get("mean_test_ne")))
        if with_sel:
            sel = selected.get(arm["arm"], {})
            cells.append(_md_delta(sel.get("delta_test_ne_at_selected"), sel.get("mean_test_ne_at_selected")))
        lines.append("| " + " | ".join(cells) + " |")
    # the same arms' mean test NE (over seeds), to read whether NE rises across passes
    lines += [
        "",
        "| arm | "
        + " | ".join(f"test NE after {pp['pass']}" for pp in per_pass)
        + (" | at selected |" if with_sel else " |"),
    ]
    lines.append("|" + "---|" * (len(per_pass) + 1 + with_sel))
    for i, arm in enumerate(per_pass[0]["arms"]):
        nes = [pp["arms"][i].get("mean_test_ne") for pp in per_pass]
        if with_sel:
            nes.append(selected.get(arm["arm"], {}).get("mean_test_ne_at_selected"))
        lines.append(
            "| " + " | ".join([arm["label"], *("–" if v is None else f"{v:.4f}" for v in nes)]) + " |"
        )
    oracle = [pp.get("oracle_test_ne") for pp in per_pass]
    if any(o is not None for o in oracle):
        lines.append("")
        lines.append(
            "Oracle test NE (the data's true probabilities; no model beats it): "
            + f"{next(o for o in oracle if o is not None):.4f}"
        )
    lines.append("")
    lines += [f"- {pp['sentence']}" for pp in per_pass]
    lines += [f"- note: {n}" for n in results.get("notes", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m services.study_stats STUDY.json``: the answer of a finished study
    (``rectrain study --local``'s study.json, or GET /v1/studies/{id}) as Markdown."""
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m services.study_stats", description=main.__doc__)
    ap.add_argument("study_json")
    args = ap.parse_args(argv)
    doc = json.loads(Path(args.study_json).read_text())
    print(to_markdown(doc["results"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------------------- wall time


def wall_totals(run_walls: dict[str, dict[str, float]], study_wall_s: float | None = None) -> dict[str, Any]:
    """A study's wall split: each part summed over its runs' ``wall_split`` (seconds),
    the runs' wall in all, the study's own wall when given, and the median per-run
    overhead (a run's wall minus its time queued, its training and its evaluation)."""
    import statistics

    from trainer.report import WALL_PARTS

    totals: dict[str, Any] = {k: sum(float(w.get(k, 0.0)) for w in run_walls.values()) for k in WALL_PARTS}
    totals["runs"] = len(run_walls)
    totals["runs_wall_s"] = sum(float(w.get("wall_s", 0.0)) for w in run_walls.values())
    totals["study_wall_s"] = study_wall_s
    overheads = [
        float(w.get("wall_s", 0.0))
        - float(w.get("waiting_s", 0.0))
        - float(w.get("training_s", 0.0))
        - float(w.get("evaluation_s", 0.0))
        for w in run_walls.values()
    ]
    totals["overhead_median_s"] = statistics.median(overheads) if overheads else None
    return totals


def format_wall_totals(t: dict[str, Any]) -> str:
    """One line: where the study's time went. Parts are shares of the runs' own time
    (their walls without the time queued; runs side by side add up), the time queued
    is given apart."""
    ran = t["runs_wall_s"] - t["waiting_s"]
    if not t["runs"] or ran <= 0:
        return "time: no run finished"
    scale = max(ran, t.get("study_wall_s") or 0.0)

    def dur(x: float) -> str:
        return f"{x:.1f} s" if scale < 120 else f"{x / 60:.1f} min"

    def part(key: str, label: str) -> str:
        return f"{label} {dur(t[key])} ({100 * t[key] / ran:.0f}%)"

    parts = [
        part("training_s", "training"),
        part("evaluation_s", "evaluation"),
        part("startup_s", "start-up"),
        part("data_s", "data"),
        part("checkpoint_s", "checkpoint"),
    ]
    head = f"time: {t['runs']} runs ran {dur(ran)}"
    if t.get("study_wall_s"):
        head += f" (the study took {dur(t['study_wall_s'])})"
    tail = f"; queued {dur(t['waiting_s'])} in all" if t["waiting_s"] else ""
    return (
        head
        + ": "
        + ", ".join(parts)
        + tail
        + f"; per-run overhead (wall - waiting - training - evaluation) median {t['overhead_median_s']:.1f} s"
    )
