"""Study statistics: paired differences against the same-seed baseline, with t-intervals,
multiplicity-adjusted p-values, and choices made on validation NE only.

The answer has two comparisons, each paired by seed (``Δ_s = NE(arm, seed s) −
NE(baseline, seed s)``; lower NE is better):

1. **The headline: what you would ship.** Each run stops at its own validation-selected
   pass (lowest validation NE, the earliest on ties) and its test NE there is compared with
   the baseline's run of the same seed at *the baseline's* validation-selected pass. It
   answers "does a regularizer make extra passes pay, compared with simply stopping the
   baseline early?". This is the first table and the first sentence of every answer.
2. **The same pass (second table):** after k passes against the baseline after k passes;
   it answers "does the regularizer stop the damage after k passes".

Per arm and comparison: mean Δ over the seeds both runs finished, a 95% Student-t
interval ``mean ± t(0.975, n−1) · sd/√n`` (``scipy.stats.t``), the sd of Δ, the seeds
favouring the arm, the two-sided paired t-test p-value, and the **Holm-adjusted** p over
the arms of that comparison; an arm "beats" or is "worse" only when its adjusted p is
below 0.05 (docs/studies.md: why Holm, not Dunnett). A power line gives the smallest Δ
the study's seeds can detect at 80% power and the seeds needed for a given Δ.

**Choices use validation NE only**: the pass of each run, the best strength per
regularizer, the best arm and the ranking; test NE is reported for what was chosen
(``tests/services/test_svc_study_stats.py`` permutes the test values and checks that no
choice changes). Input is plain data (per-run per-pass dicts, as in the jobs' ``pass``
events), so this module needs no Redis.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np
from scipy import optimize, stats

STRATA = ("frequent", "medium", "rare")
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8
ONE_SEED_NOTE = "one seed: no confidence interval (add seeds to tell a difference from seed noise)"
CHOICE_NOTE = (
    "Every choice (each run's pass, the best strength per regularizer, the best arm, the ranking) "
    "is made on validation NE; test NE is reported for what was chosen."
)
HEADLINE_WHAT = (
    "each arm at its runs' validation-selected pass vs the baseline at its runs' "
    "validation-selected pass, paired by seed"
)
# per-run metrics shown beside NE (item: calibration alone flags a collapsed model)
EXTRA_METRICS = ("train_ne", "test_calibration", "test_auc", "val_auc")


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


def t_pvalue(d: list[float] | np.ndarray) -> float | None:
    """Two-sided p of the paired t-test (mean Δ = 0); None with fewer than two values.

    ``scipy.stats.ttest_1samp`` gives NaN when every Δ is equal: all zero (a freeze arm
    before it starts) is no evidence (p = 1); a constant non-zero Δ is certain (p = 0).
    """
    x = np.asarray(d, dtype=np.float64)
    if x.size < 2:
        return None
    if float(x.std(ddof=1)) <= 1e-12:  # equal up to float rounding
        return 1.0 if abs(float(x.mean())) <= 1e-12 else 0.0
    return float(stats.ttest_1samp(x, 0.0).pvalue)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None entries are left out of the family).

    Written here (ten lines) rather than importing statsmodels at run time for one
    function; the tests check it against ``statsmodels.stats.multitest.multipletests``.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):  # type: ignore[arg-type,return-value]
        running = max(running, min(1.0, (m - rank) * pvalues[i]))  # type: ignore[operator]
        out[i] = running
    return out


def ttest_power(effect: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample (paired) t-test at standardized effect Δ/sd
    with n pairs (noncentral t; the same as statsmodels' ``TTestPower.power``)."""
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    nc = effect * math.sqrt(n)
    upper = float(stats.nct.sf(crit, df, nc))
    lower = float(stats.nct.cdf(-crit, df, nc))  # far from 0 it underflows (scipy: NaN)
    return (upper if math.isfinite(upper) else 1.0) + (lower if math.isfinite(lower) else 0.0)


def detectable_delta(sd: float, n: int, alpha: float, power: float = POWER) -> float | None:
    """Smallest |Δ| a paired t-test on n seeds detects with ``power`` at level ``alpha``."""
    if n < 2 or not sd > 0:
        return None
    hi = 1.0
    while ttest_power(hi, n, alpha) < power:  # bracket the root (nct is NaN far out)
        hi *= 2
    eff = optimize.brentq(lambda e: ttest_power(e, n, alpha) - power, 0.0, hi, xtol=1e-10)
    return float(eff * sd)


def seeds_needed(
    delta: float, sd: float, alpha: float, power: float = POWER, max_n: int = 100_000
) -> int | None:
    """Fewest seeds (≥ 2) for which a paired t-test detects |Δ| with ``power``."""
    if not sd > 0 or not abs(delta) > 0:
        return None
    eff = abs(delta) / sd
    lo, hi = 2, 2
    while ttest_power(eff, hi, alpha) < power:
        if hi >= max_n:
            return None
        lo, hi = hi, min(hi * 2, max_n)
    while lo < hi:  # power rises with n: the first n that reaches it
        mid = (lo + hi) // 2
        if ttest_power(eff, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return hi


def paired_delta(arm: dict[int, float | None], baseline: dict[int, float | None]) -> dict[str, Any] | None:
    """Mean Δ = arm − baseline over the seeds both have, its 95% t-interval, the
    two-sided paired t-test p, sd of Δ and the seeds favouring the arm.

    Returns None when no seed has both values. ``p_adj`` and ``verdict`` are added by
    :func:`adjust` once the whole comparison is known.
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
        "p": t_pvalue(d),
        "favouring": int((d < 0).sum()),
        "per_seed": [float(x) for x in d],
        "excludes_zero": bool(ci and (ci[1] < 0 or ci[0] > 0)),
    }
    if ci is None:
        out["note"] = ONE_SEED_NOTE
    return out


def adjust(deltas: list[dict[str, Any] | None]) -> None:
    """Holm over one comparison's arms: sets ``p_adj`` and ``verdict`` ("beats" /
    "worse" when the adjusted p < 0.05, else "no difference"; None without a p)."""
    adj = holm([d.get("p") if d else None for d in deltas])
    for d, pa in zip(deltas, adj, strict=True):
        if d is None:
            continue
        d["p_adj"] = pa
        if pa is None:
            d["verdict"] = None
        elif pa < ALPHA:
            d["verdict"] = "beats" if d["mean"] < 0 else "worse"
        else:
            d["verdict"] = "no difference"


def _mean(vals: list[float | None]) -> float | None:
    xs = [v for v in (_num(x) for x in vals) if v is not None]
    return float(np.mean(xs)) if xs else None


def _sd(vals: list[float | None]) -> float | None:
    """Sample sd over seeds (ddof 1); None with fewer than two values."""
    xs = [v for v in (_num(x) for x in vals) if v is not None]
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else None


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


def _val_key(d: dict[str, Any] | None, label: str) -> tuple[float, str]:
    """Sort key of a choice: the mean validation Δ (lower is better), never test NE."""
    m = d.get("mean") if d else None
    return (m if m is not None else math.inf, label)


def _references(
    given: dict[str, Any] | None,
    run_summaries: dict[str, dict[str, Any]],
    run_passes: dict[str, list[dict[str, Any]]],
) -> dict[str, dict[str, float | None]]:
    """Reference predictors' NE per split, ``{name: {"val_ne", "test_ne"}}`` (e.g.
    ``constant``, ``logistic``): given, or the mean over runs of a ``references`` field
    in their summaries or pass results (every run of a study sees the same data)."""
    found: dict[str, dict[str, list[float]]] = {}
    sources: list[Any] = [given] if given else []
    if not given:
        sources += [s.get("references") for s in run_summaries.values()]
        sources += [p.get("references") for ps in run_passes.values() for p in ps]
    for src in sources:
        if not isinstance(src, dict):
            continue
        for name, splits in src.items():
            if not isinstance(splits, dict):
                continue
            for split, v in splits.items():
                # the trainer's results.json says "validation_ne" (trainer/references.py)
                key = "val_ne" if split == "validation_ne" else str(split)
                if _num(v) is not None and key in ("train_ne", "val_ne", "test_ne"):
                    found.setdefault(str(name), {}).setdefault(key, []).append(float(v))
    return {name: {split: float(np.mean(v)) for split, v in splits.items()} for name, splits in found.items()}


def analyze(
    arms: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    run_passes: dict[str, list[dict[str, Any]]],
    num_passes: int,
    run_summaries: dict[str, dict[str, Any]] | None = None,
    references: dict[str, Any] | None = None,
    search: list[dict[str, Any]] | None = None,
    tuned_baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The study's answer.

    Args:
        arms: ``Arm.to_dict()`` of every arm (the baseline first).
        runs: ``{"key", "arm", "seed"}`` of every run.
        run_passes: run key -> its per-pass results (``pass`` events: ``pass`` 0-based,
            ``test_ne``, ``val_ne``, ``train_ne``, ``test_calibration``, ``test_auc``,
            ``*_by_stratum``, ``oracle_*``); missing fields allowed.
        num_passes: passes every run trains.
        run_summaries: run key -> job summary (may hold ``selected_pass`` /
            ``test_ne_at_selected`` from the trainer; used when present).
        references: reference predictors' NE, ``{name: {"val_ne", "test_ne"}}``; when
            absent, taken from a ``references`` field of the runs' summaries or passes.
        search: a staged study's searched strengths (``Stages.search`` of
            trainer/study_search.py): each gets its ``confirmed`` row (the chosen
            strength on the study's own seeds, an arm of ``arms``) and a sentence.
        tuned_baseline: a staged study's tuning stage (``Stages.tuned``): a sentence.

    Returns a dict with ``headline`` (the comparison against stopping the baseline
    early: ranking, best arm, best per variant, Holm-adjusted p, power, sentence),
    ``per_pass`` (the same-pass comparison), ``selected`` (every arm at its selected
    pass), ``curves``, ``references`` and ``notes``.
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

    per_pass: list[dict[str, Any]] = []
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
            row["sd_test_ne"] = _sd(list(values(a["key"], k, "test_ne").values()))
            for metric in EXTRA_METRICS:
                row[f"mean_{metric}"] = _mean(list(values(a["key"], k, metric).values()))
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
        adjust([r["delta_test_ne"] for r in rows if "delta_test_ne" in r])
        oracle = _mean([ps.get(k - 1, {}).get("oracle_test_ne") for ps in base.values()]) if base else None
        per_pass.append(
            {
                "pass": k,
                "arms": rows,
                "oracle_test_ne": oracle,
                "sentence": answer_sentence(k, rows, len(seeds_all)),
            }
        )

    # ---- every run at its validation-selected pass
    at_sel: dict[str, dict[int, dict[str, Any] | None]] = {}
    chosen_by_arm: dict[str, dict[int, int | None]] = {}
    test_by_arm: dict[str, dict[int, float | None]] = {}
    for a in arms:
        chosen: dict[int, int | None] = {}
        test_at: dict[int, float | None] = {}
        rows_at: dict[int, dict[str, Any] | None] = {}
        for s, ps in by_arm.get(a["key"], {}).items():
            summ = run_summaries.get(f"{a['key']}/s{s}", {})
            sp = summ.get("selected_pass") if isinstance(summ.get("selected_pass"), int) else None
            if sp is None:
                sp = selected_pass(list(ps.values()))
            chosen[s] = sp
            rows_at[s] = ps.get(sp) if sp is not None else None
            at = _num(summ.get("test_ne_at_selected"))
            test_at[s] = at if at is not None else _metric(rows_at[s], "test_ne")
        at_sel[a["key"]], chosen_by_arm[a["key"]], test_by_arm[a["key"]] = rows_at, chosen, test_at

    def sel_vals(arm_key: str, metric: str, stratum: str | None = None) -> dict[int, float | None]:
        if metric == "test_ne" and stratum is None:
            return test_by_arm[arm_key]
        return {s: _metric(p, metric, stratum) for s, p in at_sel[arm_key].items()}

    selected = []
    for a in arms:
        row = {
            "arm": a["key"],
            "label": a["label"],
            "variant": a.get("variant"),
            "variant_index": a.get("variant_index"),
            "params": a.get("params") or {},
            "selected_pass_per_seed": {
                str(s): (None if p is None else p + 1) for s, p in sorted(chosen_by_arm[a["key"]].items())
            },
            "mean_test_ne_at_selected": _mean(list(sel_vals(a["key"], "test_ne").values())),
            "sd_test_ne_at_selected": _sd(list(sel_vals(a["key"], "test_ne").values())),
            "mean_val_ne_at_selected": _mean(list(sel_vals(a["key"], "val_ne").values())),
        }
        for metric in EXTRA_METRICS:
            row[f"mean_{metric}_at_selected"] = _mean(list(sel_vals(a["key"], metric).values()))
        strata_at: dict[str, Any] = {}
        for st in STRATA:
            vals = sel_vals(a["key"], "test_ne", st)
            if any(_num(v) is not None for v in vals.values()):
                cell = {"mean": _mean(list(vals.values()))}
                if not a.get("is_baseline"):
                    cell["delta"] = paired_delta(vals, sel_vals(base_key, "test_ne", st))
                strata_at[st] = cell
        row["strata_test_ne_at_selected"] = strata_at
        if not a.get("is_baseline"):
            row["delta_test_ne_at_selected"] = paired_delta(
                sel_vals(a["key"], "test_ne"), sel_vals(base_key, "test_ne")
            )
            row["delta_val_ne_at_selected"] = paired_delta(
                sel_vals(a["key"], "val_ne"), sel_vals(base_key, "val_ne")
            )
        selected.append(row)
    headline = _headline(selected, base_key, len(seeds_all), has_val)

    refs = _references(references, run_summaries, run_passes)
    notes = []
    if len(seeds_all) < 2:
        notes.append(ONE_SEED_NOTE)
    if not has_val:
        notes.append(
            "no validation NE in the runs' results (no validation days, or a trainer that does not "
            "report val_ne): the validation-selected pass is not available"
        )
    const = (refs.get("constant") or {}).get("test_ne")
    base_first = per_pass[0]["arms"][0].get("mean_test_ne") if per_pass else None
    if const is not None and base_first is not None and base_first > const:
        notes.append(
            f"the baseline's test NE after 1 pass ({base_first:.4f}) is worse than the constant "
            f"predictor's ({const:.4f}): the model learns nothing the click rate does not; fix the "
            "data or model before reading the regularizers"
        )
    notes.append(CHOICE_NOTE)
    stage_sentences = []
    if tuned_baseline:
        stage_sentences.append(tuned_sentence(tuned_baseline))
    searched = []
    for srch in search or []:
        conf = next((r for r in selected if r["arm"] == srch.get("chosen_arm")), None)
        srch = {**srch, "confirmed": None}
        if conf is not None:
            row = conf
            srch["confirmed"] = {
                "arm": row["arm"],
                "label": row["label"],
                "delta_test_ne_at_selected": row.get("delta_test_ne_at_selected"),
                "delta_val_ne_at_selected": row.get("delta_val_ne_at_selected"),
                "mean_test_ne_at_selected": row.get("mean_test_ne_at_selected"),
            }
        srch["sentence"] = search_sentence(srch)
        stage_sentences.append(srch["sentence"])
        searched.append(srch)
    out_staged: dict[str, Any] = {}
    if search is not None or tuned_baseline is not None:
        out_staged = {
            "search": searched,
            "tuned_baseline": tuned_baseline,
            "stage_sentences": stage_sentences,
        }
    return {
        **out_staged,
        "baseline": base_key,
        "seeds": seeds_all,
        "passes": num_passes,
        "confidence": CONFIDENCE,
        "adjustment": "holm",
        "headline": headline,
        "per_pass": per_pass,
        "selected": selected,
        "curves": strength_curves(arms, per_pass, selected, headline),
        "references": refs,
        "notes": notes,
    }


def _headline(selected: list[dict[str, Any]], base_key: str, n_seeds: int, has_val: bool) -> dict[str, Any]:
    """The comparison against stopping the baseline early: Holm over its arms, the
    ranking, the best arm and the best strength per variant (all on validation NE)."""
    arms = [r for r in selected if r["arm"] != base_key]
    base = next(r for r in selected if r["arm"] == base_key)
    adjust([r.get("delta_test_ne_at_selected") for r in arms])
    ranked = sorted(
        (r for r in arms if (r.get("delta_val_ne_at_selected") or {}).get("mean") is not None),
        key=lambda r: _val_key(r.get("delta_val_ne_at_selected"), r["label"]),
    )
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    best_per_variant: dict[int, dict[str, Any]] = {}
    for r in ranked:  # ranked: the first of each variant is its best on validation
        best_per_variant.setdefault(r["variant_index"], r)
    for r in arms:
        r["best_of_variant"] = best_per_variant.get(r["variant_index"]) is r
    best = ranked[0] if ranked and ranked[0]["delta_val_ne_at_selected"]["mean"] < 0 else None
    tested = [r["delta_test_ne_at_selected"] for r in arms if r.get("delta_test_ne_at_selected")]
    h: dict[str, Any] = {
        "comparison": HEADLINE_WHAT,
        "chosen_on": "validation NE",
        "adjustment": "holm",
        "family": sum(1 for d in tested if d.get("p") is not None),
        "ranking": [r["arm"] for r in ranked],
        "best": best["arm"] if best else None,
        "closest": ranked[0]["arm"] if ranked else None,
        "best_per_variant": [
            {"variant": r["variant"], "arm": r["arm"], "label": r["label"]}
            for _, r in sorted(best_per_variant.items())
        ],
        "beats": [
            r["arm"] for r in ranked if (r["delta_test_ne_at_selected"] or {}).get("verdict") == "beats"
        ],
        "worse": [
            r["arm"] for r in ranked if (r["delta_test_ne_at_selected"] or {}).get("verdict") == "worse"
        ],
        "baseline": {
            "mean_test_ne": base["mean_test_ne_at_selected"],
            "sd_test_ne": base["sd_test_ne_at_selected"],
            "selected_pass_per_seed": base["selected_pass_per_seed"],
        },
    }
    h["power"] = _power(arms, best or (ranked[0] if ranked else None), n_seeds, h["family"], base)
    h["sentence"] = headline_sentence(h, {r["arm"]: r for r in arms}, has_val)
    return h


def _power(
    arms: list[dict[str, Any]],
    target: dict[str, Any] | None,
    n_seeds: int,
    family: int,
    base: dict[str, Any],
) -> dict[str, Any] | None:
    """The smallest Δ the study detects at 80% power and the seeds a given Δ needs.

    A paired t-test at the level of Holm's first step (0.05 / arms: what the best arm
    must pass), with the median sd of Δ over the arms."""
    sds = [
        d["sd"]
        for r in arms
        if (d := r.get("delta_test_ne_at_selected")) and d.get("sd") is not None and d["sd"] > 1e-12
    ]
    if n_seeds < 2 or not sds or family < 1:
        return None
    sd = float(np.median(sds))
    alpha = ALPHA / family
    out: dict[str, Any] = {
        "seeds": n_seeds,
        "arms": family,
        "alpha": alpha,
        "power": POWER,
        "sd_delta": sd,
        "baseline_sd": base.get("sd_test_ne_at_selected"),
        "detectable_delta": detectable_delta(sd, n_seeds, alpha),
        "target": None,
    }
    d = (target or {}).get("delta_test_ne_at_selected") or {}
    if d.get("mean"):
        out["target"] = {
            "arm": target["arm"],  # type: ignore[index]
            "label": target["label"],  # type: ignore[index]
            "delta": abs(d["mean"]),
            "seeds_needed": seeds_needed(d["mean"], sd, alpha),
        }
    return out


def _d(x: float) -> str:
    return f"{abs(x):.4f}"


def selected_extra_cells(r: dict[str, Any], strata: dict[str, Any]) -> list[str]:
    """An arm's cells beside its headline Δ (Markdown and the HTML report alike): train
    NE, calibration and AUC at the selected pass, then each frequency stratum's Δ test NE
    (the baseline's own NE on its row)."""
    return [
        _f(r.get("mean_train_ne_at_selected")),
        _f(r.get("mean_test_calibration_at_selected"), ".3f"),
        _f(r.get("mean_test_auc_at_selected"), ".3f"),
        *(
            "–"
            if s not in strata
            else _f(strata[s]["delta"]["mean"], "+.4f")
            if strata[s].get("delta")
            else _f(strata[s].get("mean"))
            for s in STRATA
        ),
    ]


def fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def _strength(r: dict[str, Any]) -> str:
    """ "sparse_l2 at weight=0.0001" (the arm's grid point), or the label without a grid."""
    label, variant = r["label"], r.get("variant") or ""
    if r.get("params") and label.startswith(variant + " "):
        return f"{variant} at {label[len(variant) + 1 :]}"
    return label


def _passes_text(per_seed: dict[str, int | None]) -> str:
    ks = [p for p in per_seed.values() if p is not None]
    if not ks:
        return "no pass selected"
    if len(set(ks)) == 1:
        return f"selects pass {ks[0]}"
    return f"selects passes {min(ks)}–{max(ks)} by seed ({', '.join(map(str, ks))})"


def _delta_text(d: dict[str, Any]) -> str:
    if d.get("ci_low") is None:
        return f"Δ test NE {d['mean']:+.4f} (one seed: no interval)"
    return (
        f"Δ test NE {d['mean']:+.4f} [95% CI {d['ci_low']:+.4f}, {d['ci_high']:+.4f}, "
        f"Holm-adjusted p {fmt_p(d.get('p_adj'))}], {d['n']} seeds"
    )


def headline_sentence(h: dict[str, Any], rows: dict[str, dict[str, Any]], has_val: bool) -> str:
    """The first sentence of the answer: the arm validation chooses, against stopping
    the baseline at its own validation-selected pass, with its interval and Holm p."""
    if not has_val:
        return (
            "No validation NE in the runs: the study cannot select a pass or choose an arm, so it "
            "cannot compare with stopping the baseline early (see the same-pass table)."
        )
    if not h["closest"]:
        return "No paired results at the validation-selected pass yet."
    top = rows[h["closest"]]
    d = top.get("delta_test_ne_at_selected")
    what = f"{_strength(top)} ({_passes_text(top['selected_pass_per_seed'])})"
    if d is None:
        return f"Best on validation: {what}; no paired test NE yet."
    if d.get("ci_low") is None:
        return (
            f"Best on validation (one seed, so no interval or p-value): {what}, {_delta_text(d)}; "
            "add seeds to tell it from seed noise."
        )
    if h["best"] is None:
        dv = top["delta_val_ne_at_selected"]
        return (
            "No regularizer beats stopping the baseline early: on validation none is below the "
            f"baseline at its selected pass (closest: {what}, Δ validation NE {dv['mean']:+.4f}; "
            f"{_delta_text(d)})."
        )
    others = [rows[k]["label"] for k in h["beats"] if k != h["best"]]
    if d.get("verdict") == "beats":
        s = f"Best at what you would ship: {what}, {_delta_text(d)}."
        return s + (f" Also beat stopping early: {', '.join(others)}." if others else "")
    if others:
        return (
            f"Best at what you would ship (chosen on validation): {what}, {_delta_text(d)}: not "
            f"shown to beat stopping the baseline early; {', '.join(others)} did on test, but "
            "validation did not choose them."
        )
    return f"No regularizer beats stopping the baseline early: the best on validation is {what}, {_delta_text(d)}."


def _vals(xs: list[Any]) -> str:
    return "[" + ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in xs) + "]"


def tuned_sentence(t: dict[str, Any]) -> str:
    """What a tuned baseline was tuned over and what was chosen (validation NE only)."""
    over = ", ".join(f"{k} over {_vals(v)}" for k, v in t["grid"].items())
    seeds = ", ".join(map(str, t.get("seeds") or []))
    n = len(t.get("seeds") or [])
    how = f"on {t['chosen_on']} ({n} tuning seed{'s' if n != 1 else ''}: {seeds})"
    if not t.get("chosen"):
        return f"The baseline is tuned first: {over}, {how}; nothing chosen yet."
    chosen = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["chosen"].items())
    return f"The baseline was tuned first: {over}, {how}; chosen {chosen}; the baseline and every arm use it."


def search_sentence(s: dict[str, Any]) -> str:
    """One searched strength: the range, the search's cost, the choice (on validation,
    search seeds) and the confirmed Δ on the study's own seeds."""
    name = s["param"].split(".", 1)[-1]
    head = (
        f"{s['variant']}: {name} searched over [{s['low']:g}, {s['high']:g}] ({s['scale']}) on validation "
        f"NE only: {len(s.get('rounds') or [])} of {s['rounds_planned']} rounds, {s['runs_used']} runs "
        f"(budget {s['budget_runs']}) on search seeds {_vals(s.get('search_seeds') or [])}"
    )
    if s.get("stopped") == "budget":
        head += ", stopped by the budget"
    if s.get("chosen") is None:
        if s.get("stopped"):
            return head + "; no strength chosen: no search run reported validation NE."
        return head + "; nothing chosen yet."
    best: dict[str, Any] = next((p for p in s.get("points") or [] if p["value"] == s["chosen"]), {})
    dv = best.get("val_delta_mean")
    head += f"; chosen {name}={s['chosen']:g}" + (
        f" (mean Δ validation NE {dv:+.4f} over {best.get('seeds')} search seeds)" if dv is not None else ""
    )
    if s["chosen"] in (s["low"], s["high"]):  # the search never looks past its range
        end = "lower" if s["chosen"] == s["low"] else "upper"
        head += (
            f", at the {end} end of the range: the best strength may lie beyond it, widen the range to look"
        )
    conf = s.get("confirmed") or {}
    d = conf.get("delta_test_ne_at_selected")
    seeds = ", ".join(map(str, s.get("confirmation_seeds") or []))
    if not d:
        return head + f"; confirmation on seeds {seeds} (not used by the search): no result yet."
    return head + f"; confirmed on seeds {seeds}, which the search did not use: {_delta_text(d)}."


def power_sentence(pw: dict[str, Any] | None) -> str | None:
    """The power line: the smallest detectable Δ and the seeds a given Δ needs."""
    if not pw:
        return None
    s = (
        f"Power: with {pw['seeds']} seeds and Holm over {pw['arms']} arms (the best arm needs "
        f"p < {pw['alpha']:.2g}), a Δ test NE of {pw['detectable_delta']:.4f} or more is found "
        f"{pw['power']:.0%} of the time (median sd of Δ {pw['sd_delta']:.4f}"
        + (f"; the baseline's seed sd {pw['baseline_sd']:.4f}" if pw.get("baseline_sd") is not None else "")
        + ")"
    )
    t = pw.get("target")
    if t:
        n = t["seeds_needed"]
        s += f"; {t['label']}'s Δ of {t['delta']:.4f} needs " + (
            f"{n} seeds" if n is not None else "more than 100,000 seeds"
        )
    return s + "."


def answer_sentence(k: int, rows: list[dict[str, Any]], n_seeds: int) -> str:
    """The same-pass comparison after k passes: which arms beat (or lose to) the baseline
    trained k passes, Holm-adjusted; listed in validation order."""
    head = f"After {k} pass{'es' if k > 1 else ''}"
    deltas: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (r, r["delta_test_ne"]) for r in rows if r.get("delta_test_ne")
    ]
    if not deltas:
        return f"{head}: no paired results yet."
    if all(d["ci_low"] is None for _, d in deltas):
        r, d = min(deltas, key=lambda t: _val_key(t[0].get("delta_val_ne"), t[0]["label"]))
        return (
            f"{head} (one seed, so no intervals): the lowest validation NE vs the baseline is "
            f"{r['label']} (test {'−' if d['mean'] < 0 else '+'}{_d(d['mean'])}); add seeds to tell it "
            "from seed noise."
        )
    better = sorted(
        [(r, d) for r, d in deltas if d.get("verdict") == "beats"],
        key=lambda t: _val_key(t[0].get("delta_val_ne"), t[0]["label"]),
    )
    worse = [(r, d) for r, d in deltas if d.get("verdict") == "worse"]
    parts = []
    if better:
        parts.append(
            "beats the baseline: "
            + "; ".join(
                f"{r['label']} by {_d(d['mean'])} NE (95% CI {_d(d['ci_high'])}–{_d(d['ci_low'])}, "
                f"Holm p {fmt_p(d.get('p_adj'))}, {d['favouring']}/{d['n']} seeds)"
                for r, d in better
            )
        )
    else:
        parts.append("no variant beats the baseline (Holm-adjusted p < 0.05)")
    if worse:
        parts.append(
            "worse than the baseline: "
            + ", ".join(f"{r['label']} (+{_d(d['mean'])}, Holm p {fmt_p(d.get('p_adj'))})" for r, d in worse)
        )
    return f"{head}: " + "; ".join(parts) + "."


def strength_curves(
    arms: list[dict[str, Any]],
    per_pass: list[dict[str, Any]],
    selected: list[dict[str, Any]] | None = None,
    headline: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """For each variant with a numeric grid: Δ test NE and Δ validation NE vs the
    parameter, per pass and at the validation-selected pass; ``chosen``: the point
    validation picks (lowest validation Δ at the selected pass).

    With several grid parameters in one variant, one curve per parameter for each
    setting of the others.
    """
    curves = []
    by_variant: dict[int, list[dict[str, Any]]] = {}
    for a in arms:
        if not a.get("is_baseline") and a.get("params"):
            by_variant.setdefault(a["variant_index"], []).append(a)
    rows_by = {(pp["pass"], r["arm"]): r for pp in per_pass for r in pp["arms"]}
    sel_by = {r["arm"]: r for r in selected or []}
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
                        row = rows_by[(pp["pass"], a["key"])]
                        d, dv = row.get("delta_test_ne"), row.get("delta_val_ne")
                        pts.append(
                            {
                                "pass": pp["pass"],
                                "mean": d["mean"] if d else None,
                                "ci_low": d["ci_low"] if d else None,
                                "ci_high": d["ci_high"] if d else None,
                                "val_mean": dv["mean"] if dv else None,
                            }
                        )
                    s = sel_by.get(a["key"], {})
                    d, dv = s.get("delta_test_ne_at_selected"), s.get("delta_val_ne_at_selected")
                    at = {
                        "mean": d["mean"] if d else None,
                        "ci_low": d["ci_low"] if d else None,
                        "ci_high": d["ci_high"] if d else None,
                        "p_adj": d.get("p_adj") if d else None,
                        "val_mean": dv["mean"] if dv else None,
                    }
                    points.append(
                        {"value": a["params"][param], "arm": a["key"], "per_pass": pts, "at_selected": at}
                    )
                ranked = [p for p in points if p["at_selected"]["val_mean"] is not None]
                chosen = min(ranked, key=lambda p: p["at_selected"]["val_mean"])["arm"] if ranked else None
                curves.append(
                    {
                        "variant": members[0]["variant"],
                        "param": param,
                        "others": others,
                        "points": points,
                        "chosen": chosen,
                    }
                )
    return curves


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
    *(
        f"{m}_{s}_{c}"
        for m in ("test_ne", "val_ne")
        for s in STRATA
        for c in ("mean", "delta", "ci_low", "ci_high")
    ),
    "comparison",
    "rank",
    "selected_passes",
    "p",
    "p_holm",
    "verdict",
    "sd_delta",
    "sd_test_ne",
    "mean_train_ne",
    "mean_test_calibration",
    "mean_test_auc",
]


def to_csv(results: dict[str, Any]) -> str:
    """The headline rows first (``pass`` = "selected": every arm at its validation-
    selected pass vs the baseline at its own, in validation order), then one row per
    (pass count, arm) of the same-pass comparison; means, paired Δ, intervals, raw and
    Holm-adjusted p, per stratum too."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()

    def write(row: dict[str, Any]) -> None:
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})

    def delta_cols(d: dict[str, Any] | None) -> dict[str, Any]:
        d = d or {}
        return {
            "delta_test_ne": d.get("mean"),
            "ci_low": d.get("ci_low"),
            "ci_high": d.get("ci_high"),
            "seeds": d.get("n"),
            "seeds_favouring": d.get("favouring"),
            "p": d.get("p"),
            "p_holm": d.get("p_adj"),
            "verdict": d.get("verdict"),
            "sd_delta": d.get("sd"),
        }

    for r in _headline_rows(results):
        dv = r.get("delta_val_ne_at_selected") or {}
        row = {
            "pass": "selected",
            "comparison": "vs the baseline at its validation-selected pass",
            "arm": r["arm"],
            "label": r["label"],
            "rank": r.get("rank"),
            "selected_passes": " ".join(
                "-" if p is None else str(p) for p in r["selected_pass_per_seed"].values()
            ),
            "mean_test_ne": r.get("mean_test_ne_at_selected"),
            "mean_val_ne": r.get("mean_val_ne_at_selected"),
            "delta_val_ne": dv.get("mean"),
            "val_ci_low": dv.get("ci_low"),
            "val_ci_high": dv.get("ci_high"),
            "sd_test_ne": r.get("sd_test_ne_at_selected"),
            "mean_train_ne": r.get("mean_train_ne_at_selected"),
            "mean_test_calibration": r.get("mean_test_calibration_at_selected"),
            "mean_test_auc": r.get("mean_test_auc_at_selected"),
            **delta_cols(r.get("delta_test_ne_at_selected")),
        }
        for st, cell in (r.get("strata_test_ne_at_selected") or {}).items():
            sd = cell.get("delta") or {}
            row |= {
                f"test_ne_{st}_mean": cell.get("mean"),
                f"test_ne_{st}_delta": sd.get("mean"),
                f"test_ne_{st}_ci_low": sd.get("ci_low"),
                f"test_ne_{st}_ci_high": sd.get("ci_high"),
            }
        write(row)
    for pp in results.get("per_pass", []):
        for r in pp["arms"]:
            d = r.get("delta_test_ne")
            dv = r.get("delta_val_ne") or {}
            row = {
                "pass": pp["pass"],
                "comparison": "vs the baseline after the same passes",
                "arm": r["arm"],
                "label": r["label"],
                "mean_test_ne": r.get("mean_test_ne"),
                "mean_val_ne": r.get("mean_val_ne"),
                "delta_val_ne": dv.get("mean"),
                "val_ci_low": dv.get("ci_low"),
                "val_ci_high": dv.get("ci_high"),
                "sd_test_ne": r.get("sd_test_ne"),
                "mean_train_ne": r.get("mean_train_ne"),
                "mean_test_calibration": r.get("mean_test_calibration"),
                "mean_test_auc": r.get("mean_test_auc"),
                **delta_cols(d),
            }
            if d is None:
                row["seeds"] = r.get("n_test_ne")
            for m, cells in (r.get("strata") or {}).items():
                for st, cell in cells.items():
                    sd = cell.get("delta") or {}
                    row[f"{m}_{st}_mean"] = cell.get("mean")
                    row[f"{m}_{st}_delta"] = sd.get("mean")
                    row[f"{m}_{st}_ci_low"] = sd.get("ci_low")
                    row[f"{m}_{st}_ci_high"] = sd.get("ci_high")
            write(row)
    return buf.getvalue()


def _headline_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The baseline, then the arms in validation order (unranked arms last)."""
    sel = results.get("selected", [])
    h = results.get("headline") or {}
    by = {r["arm"]: r for r in sel}
    order = [results.get("baseline"), *h.get("ranking", [])]
    rows = [by[k] for k in order if k in by]
    return rows + [r for r in sel if r["arm"] not in order]


def _f(v: Any, spec: str = ".4f") -> str:
    return "–" if v is None else format(v, spec)


def _ci(d: dict[str, Any] | None) -> str:
    return "–" if not d or d.get("ci_low") is None else f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"


def references_line(results: dict[str, Any]) -> str | None:
    """Reference NE on test: the oracle (synthetic data) and reference predictors."""
    parts = []
    oracle = next(
        (pp["oracle_test_ne"] for pp in results.get("per_pass", []) if pp.get("oracle_test_ne")), None
    )
    if oracle is not None:
        parts.append(f"oracle {oracle:.4f} (the data's true probabilities: no model beats it)")
    for name, splits in (results.get("references") or {}).items():
        if splits.get("test_ne") is not None:
            parts.append(f"{name} {splits['test_ne']:.4f}")
    return "Reference test NE: " + "; ".join(parts) if parts else None


def format_table(results: dict[str, Any]) -> str:
    """The answer as text: the headline (vs stopping the baseline early) first, then
    per pass count each arm's mean test NE and Δ with its interval and Holm p."""
    h = results.get("headline") or {}
    lines = []
    if h:
        lines.append(h["sentence"])
        for st in results.get("stage_sentences") or []:
            lines.append(st)
        lines += search_text(results)
        lines.append("")
        lines.append(f"what you would ship: {h['comparison']}; ranked on validation NE")
        lines.append(
            f"  {'#':>3} {'arm':<34} {'passes':>7} {'Δ val':>8} {'test NE':>8} {'Δ test':>8} "
            f"{'95% CI':>20} {'Holm p':>7} {'sd Δ':>7} {'seeds':>5} {'train NE':>8} {'calib':>6} {'AUC':>6}"
        )
        for r in _headline_rows(results):
            d = r.get("delta_test_ne_at_selected")
            dv = r.get("delta_val_ne_at_selected")
            passes = ",".join("-" if p is None else str(p) for p in r["selected_pass_per_seed"].values())
            is_base = r["arm"] == results.get("baseline")
            rank = "" if r.get("rank") is None else str(r["rank"])
            if is_base:
                mid = [
                    f"{'baseline':>8}",
                    f"{'seed sd ' + _f(r.get('sd_test_ne_at_selected')):>20}",
                    " " * 7,
                    " " * 7,
                    " " * 5,
                ]
            else:
                dd = d or {}
                seeds = f"{dd['favouring']}/{dd['n']}" if d else ""
                mid = [
                    f"{_f(dd.get('mean'), '+.4f'):>8}",
                    f"{_ci(d):>20}",
                    f"{fmt_p(dd.get('p_adj')):>7}",
                    f"{_f(dd.get('sd')):>7}",
                    f"{seeds:>5}",
                ]
            cells = [
                f"  {rank:>3}",
                f"{r['label'][:34]:<34}",
                f"{passes[:7]:>7}",
                f"{(_f(dv['mean'], '+.4f') if dv else ''):>8}",
                f"{_f(r['mean_test_ne_at_selected']):>8}",
                *mid,
                f"{_f(r.get('mean_train_ne_at_selected')):>8}",
                f"{_f(r.get('mean_test_calibration_at_selected'), '.3f'):>6}",
                f"{_f(r.get('mean_test_auc_at_selected'), '.3f'):>6}",
            ]
            lines.append(" ".join(cells))
        pw = power_sentence(h.get("power"))
        if pw:
            lines.append("  " + pw)
        strata = [r for r in _headline_rows(results) if r.get("strata_test_ne_at_selected")]
        if strata:
            lines.append(
                f"  Δ test NE by ad frequency at the selected pass: {'  '.join(f'{s:>9}' for s in STRATA)}"
            )
            for r in strata:
                cells = r["strata_test_ne_at_selected"]
                vals = []
                for s in STRATA:
                    c = cells.get(s)
                    vals.append(
                        "–"
                        if c is None
                        else (_f(c["delta"]["mean"], "+.4f") if c.get("delta") else _f(c.get("mean")))
                    )
                lines.append(f"    {r['label'][:44]:<44} {'  '.join(f'{v:>9}' for v in vals)}")
        lines.append("")
    for pp in results.get("per_pass", []):
        lines.append(
            f"after {pp['pass']} pass(es), vs the baseline after {pp['pass']}"
            + (f"   oracle test NE {pp['oracle_test_ne']:.4f}" if pp.get("oracle_test_ne") else "")
        )
        lines.append(
            f"  {'arm':<36} {'test NE':>8} {'Δ vs base':>10} {'95% CI':>21} {'Holm p':>7} {'seeds':>6} "
            f"{'train NE':>8} {'calib':>6} {'AUC':>6}"
        )
        for r in pp["arms"]:
            d = r.get("delta_test_ne")
            ne = r.get("mean_test_ne")
            d_s = "baseline" if d is None else f"{d['mean']:+.4f}"
            n_s = "" if not d else f"{d['favouring']}/{d['n']}"
            lines.append(
                f"  {r['label'][:36]:<36} {_f(ne):>8} {d_s:>10} {_ci(d):>21} {fmt_p((d or {}).get('p_adj')):>7} "
                f"{n_s:>6} {_f(r.get('mean_train_ne')):>8} {_f(r.get('mean_test_calibration'), '.3f'):>6} "
                f"{_f(r.get('mean_test_auc'), '.3f'):>6}"
            )
        lines.append("  " + pp["sentence"])
        lines.append("")
    ref = references_line(results)
    if ref:
        lines.append(ref)
    for n in results.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines).rstrip()


def search_text(results: dict[str, Any]) -> list[str]:
    """Each searched curve as text lines: strength, the round it entered, its search
    seeds and mean Δ validation NE (the chosen one marked)."""
    lines = []
    for s in results.get("search") or []:
        name = s["param"].split(".", 1)[-1]
        lines.append(f"  searched curve of {s['variant']} (Δ validation NE vs the baseline, search seeds):")
        lines.append(f"    {name:>12} {'round':>5} {'seeds':>5} {'Δ val':>8}")
        for p in s.get("points") or []:
            mark = "  <- chosen" if p["value"] == s.get("chosen") else ""
            lines.append(
                f"    {p['value']:>12.4g} {p.get('first_round') or '':>5} {p['seeds']:>5} "
                f"{_f(p.get('val_delta_mean'), '+.4f'):>8}{mark}"
            )
    return lines


def _md_delta(d: dict[str, Any] | None, ne: float | None, with_p: bool = False) -> str:
    """One cell: mean Δ and its raw interval (bold when the Holm-adjusted p < 0.05)."""
    if d is None:
        return "–" if ne is None else f"{ne:.4f}"
    if d.get("ci_low") is None:
        return f"{d['mean']:+.4f}"
    cell = f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
    cell += f" p={fmt_p(d.get('p_adj'))}" if with_p else ""
    cell += f" {d['favouring']}/{d['n']}"
    return f"**{cell}**" if d.get("verdict") in ("beats", "worse") else cell


def to_markdown(results: dict[str, Any]) -> str:
    """The answer in Markdown (for docs and reports).

    First the headline sentence and table: every arm at its runs' validation-selected
    pass vs the baseline at its own, ranked on validation NE (rank, selected passes,
    Δ validation NE, Δ test NE with its raw 95% interval, Holm-adjusted p, sd of Δ,
    seeds favouring, train NE, calibration, AUC, Δ per frequency stratum; bold where the
    adjusted p < 0.05), the power line and the choice rule. Then the same-pass table (a
    column per pass count: Δ vs the baseline after as many passes, raw interval,
    Holm-adjusted p, seeds; bold where the adjusted p < 0.05), each arm's mean test NE
    by pass, one sentence per pass count and the notes."""
    per_pass = results.get("per_pass", [])
    if not per_pass:
        return "(no results)"
    h = results.get("headline") or {}
    lines: list[str] = []
    if h:
        lines += [f"**{h['sentence']}**", ""]
        for st in results.get("stage_sentences") or []:
            lines += [st, ""]
        for srch in results.get("search") or []:
            name = srch["param"].split(".", 1)[-1]
            lines += [
                f"Searched curve of {srch['variant']} (Δ validation NE vs the baseline on the search seeds; "
                "the headline row of this variant is its confirmation):",
                "",
                f"| {name} | first round | search seeds | mean Δ val NE |",
                "|---|---|---|---|",
            ]
            for p in srch.get("points") or []:
                v = (
                    f"**{p['value']:.4g}** (chosen)"
                    if p["value"] == srch.get("chosen")
                    else f"{p['value']:.4g}"
                )
                lines.append(
                    f"| {v} | {p.get('first_round')} | {p['seeds']} | {_f(p.get('val_delta_mean'), '+.4f')} |"
                )
            lines.append("")
        tb = results.get("tuned_baseline")
        if tb:
            keys = list(tb["grid"])
            lines += [
                "| tuned baseline: " + " | ".join(keys) + " | mean val NE | seeds |",
                "|" + "---|" * (len(keys) + 2),
            ]
            for p in tb.get("points") or []:
                mark = " (chosen)" if p["values"] == tb.get("chosen") else ""
                lines.append(
                    "| "
                    + " | ".join(str(p["values"][k]) for k in keys)
                    + f" | {_f(p.get('mean_val_ne'))}{mark} | {p['n']} |"
                )
            lines.append("")
        head = [
            "rank",
            "arm",
            "selects pass",
            "Δ val NE",
            "test NE",
            "Δ test NE [95% CI]",
            "Holm p",
            "sd Δ",
            "seeds favouring",
            "train NE",
            "calibration",
            "AUC",
            *(f"Δ {s}" for s in STRATA),
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in _headline_rows(results):
            d = r.get("delta_test_ne_at_selected")
            dv = r.get("delta_val_ne_at_selected")
            is_base = r["arm"] == results.get("baseline")
            st = r.get("strata_test_ne_at_selected") or {}
            cells = [
                "" if r.get("rank") is None else str(r["rank"]),
                r["label"] + (" (best)" if r["arm"] == h.get("best") else ""),
                ",".join("–" if p is None else str(p) for p in r["selected_pass_per_seed"].values()),
                _f(dv["mean"], "+.4f") if dv else "",
                _f(r.get("mean_test_ne_at_selected")),
                f"baseline (seed sd {_f(r.get('sd_test_ne_at_selected'))})"
                if is_base
                else "–"
                if not d
                else f"{d['mean']:+.4f} {_ci(d)}"
                if d.get("ci_low") is not None
                else f"{d['mean']:+.4f} (one seed)",
                "" if is_base else fmt_p((d or {}).get("p_adj")),
                "" if is_base else _f((d or {}).get("sd")),
                "" if is_base or not d else f"{d['favouring']}/{d['n']}",
                *selected_extra_cells(r, st),
            ]
            if d and d.get("verdict") in ("beats", "worse"):
                cells[5] = f"**{cells[5]}**"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        pw = power_sentence(h.get("power"))
        if pw:
            lines.append(pw)
        lines.append(
            f"Headline: {h['comparison']}. {CHOICE_NOTE} Bold: Holm-adjusted p < 0.05 over the "
            f"{h.get('family', 0)} arms; the interval beside it is the raw 95% t-interval."
        )
        lines.append("")
    head = ["arm"] + [
        f"{pp['pass']} pass{'es' if pp['pass'] > 1 else ''}: Δ test NE [95% CI] Holm p seeds"
        for pp in per_pass
    ]
    lines += [
        "Same pass: each arm after k passes vs the baseline after k passes.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for i, arm in enumerate(per_pass[0]["arms"]):
        cells = [arm["label"]]
        for pp in per_pass:
            row = pp["arms"][i]
            cells.append(_md_delta(row.get("delta_test_ne"), row.get("mean_test_ne"), with_p=True))
        lines.append("| " + " | ".join(cells) + " |")
    # the same arms' mean test NE (over seeds), to read whether NE rises across passes
    selected = {r["arm"]: r for r in results.get("selected", [])}
    with_sel = any(r.get("mean_test_ne_at_selected") is not None for r in selected.values())
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
    ref = references_line(results)
    if ref:
        lines += ["", ref]
    lines.append("")
    lines += [f"- {pp['sentence']}" for pp in per_pass]
    lines += [f"- note: {n}" for n in results.get("notes", []) if n != CHOICE_NOTE]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m services.study_stats STUDY.json``: the answer of a finished study
    (``rectrain study --local``'s study.json, or GET /v1/studies/{id}) as Markdown;
    ``--html OUT.html`` also writes the self-contained report page."""
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m services.study_stats", description=main.__doc__)
    ap.add_argument("study_json")
    ap.add_argument("--html", default=None, help="also write the HTML report here")
    args = ap.parse_args(argv)
    doc = json.loads(Path(args.study_json).read_text())
    print(to_markdown(doc["results"]))
    if args.html:
        from services.study_report import render_report

        Path(args.html).write_text(render_report(doc))
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
