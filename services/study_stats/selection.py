"""The study's answer: every run at its validation-selected pass, the comparison
against stopping the baseline early (the headline: ranking, best arm, best strength per
variant, all chosen on validation NE) and the same-pass comparison per pass count."""

from __future__ import annotations

from typing import Any

from services.study_stats.common import (
    CHOICE_NOTE,
    CONFIDENCE,
    EXTRA_METRICS,
    HEADLINE_WHAT,
    ONE_SEED_NOTE,
    STRATA,
    as_float,
    mean_of,
    sd_of,
    validation_key,
)
from services.study_stats.curves import strength_curves
from services.study_stats.multiplicity import adjust, power_of
from services.study_stats.paired import paired_delta
from services.study_stats.references import reference_ne
from services.study_stats.sentences import (
    answer_sentence,
    headline_sentence,
    search_sentence,
    tuned_sentence,
)


def selected_pass(passes: list[dict[str, Any]], upto: int | None = None) -> int | None:
    """0-based pass with the lowest validation NE among passes < ``upto`` (earliest on ties)."""
    best: tuple[float, int] | None = None
    for p in passes:
        i = p.get("pass")
        v = as_float(p.get("val_ne"))
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
        return as_float(p.get(metric))
    by = p.get(f"{metric}_by_stratum") or {}
    return as_float(by.get(stratum)) if isinstance(by, dict) else None


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
    has_val = any(as_float(p.get("val_ne")) is not None for ps in run_passes.values() for p in ps)

    def values(arm_key: str, k: int, metric: str, stratum: str | None = None) -> dict[int, float | None]:
        return {s: _metric(ps.get(k - 1), metric, stratum) for s, ps in by_arm.get(arm_key, {}).items()}

    per_pass: list[dict[str, Any]] = []
    for k in range(1, num_passes + 1):
        rows = []
        for a in arms:
            row: dict[str, Any] = {"arm": a["key"], "label": a["label"]}
            for metric in ("test_ne", "val_ne"):
                vals = values(a["key"], k, metric)
                row[f"mean_{metric}"] = mean_of(list(vals.values()))
                row[f"n_{metric}"] = sum(1 for v in vals.values() if as_float(v) is not None)
                if not a.get("is_baseline"):
                    row[f"delta_{metric}"] = paired_delta(vals, values(base_key, k, metric))
            row["sd_test_ne"] = sd_of(list(values(a["key"], k, "test_ne").values()))
            for metric in EXTRA_METRICS:
                row[f"mean_{metric}"] = mean_of(list(values(a["key"], k, metric).values()))
            strata: dict[str, Any] = {}
            for metric in ("test_ne", "val_ne"):
                for st in STRATA:
                    vals = values(a["key"], k, metric, st)
                    if not any(as_float(v) is not None for v in vals.values()):
                        continue
                    cell: dict[str, Any] = {"mean": mean_of(list(vals.values()))}
                    if not a.get("is_baseline"):
                        cell["delta"] = paired_delta(vals, values(base_key, k, metric, st))
                    strata.setdefault(metric, {})[st] = cell
            row["strata"] = strata
            rows.append(row)
        adjust([r["delta_test_ne"] for r in rows if "delta_test_ne" in r])
        oracle = mean_of([ps.get(k - 1, {}).get("oracle_test_ne") for ps in base.values()]) if base else None
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
            at = as_float(summ.get("test_ne_at_selected"))
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
            "mean_test_ne_at_selected": mean_of(list(sel_vals(a["key"], "test_ne").values())),
            "sd_test_ne_at_selected": sd_of(list(sel_vals(a["key"], "test_ne").values())),
            "mean_val_ne_at_selected": mean_of(list(sel_vals(a["key"], "val_ne").values())),
        }
        for metric in EXTRA_METRICS:
            row[f"mean_{metric}_at_selected"] = mean_of(list(sel_vals(a["key"], metric).values()))
        strata_at: dict[str, Any] = {}
        for st in STRATA:
            vals = sel_vals(a["key"], "test_ne", st)
            if any(as_float(v) is not None for v in vals.values()):
                cell = {"mean": mean_of(list(vals.values()))}
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

    refs = reference_ne(references, run_summaries, run_passes)
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
        key=lambda r: validation_key(r.get("delta_val_ne_at_selected"), r["label"]),
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
    h["power"] = power_of(arms, best or (ranked[0] if ranked else None), n_seeds, h["family"], base)
    h["sentence"] = headline_sentence(h, {r["arm"]: r for r in arms}, has_val)
    return h
