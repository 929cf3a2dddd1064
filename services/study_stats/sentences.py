"""The answer in words: the headline sentence (against stopping the baseline early),
the same-pass sentences, the power line and the staged study's sentences (a tuned
baseline, a searched strength), with the number formats every rendering shares."""

from __future__ import annotations

from typing import Any

from services.study_stats.common import validation_key


def _d(x: float) -> str:
    return f"{abs(x):.4f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def fmt_num(v: Any, spec: str = ".4f") -> str:
    return "–" if v is None else format(v, spec)


def fmt_ci(d: dict[str, Any] | None) -> str:
    return "–" if not d or d.get("ci_low") is None else f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"


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
        r, d = min(deltas, key=lambda t: validation_key(t[0].get("delta_val_ne"), t[0]["label"]))
        return (
            f"{head} (one seed, so no intervals): the lowest validation NE vs the baseline is "
            f"{r['label']} (test {'−' if d['mean'] < 0 else '+'}{_d(d['mean'])}); add seeds to tell it "
            "from seed noise."
        )
    better = sorted(
        [(r, d) for r, d in deltas if d.get("verdict") == "beats"],
        key=lambda t: validation_key(t[0].get("delta_val_ne"), t[0]["label"]),
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
