"""Strength curves: Δ test and validation NE against a variant's grid parameter, per
pass and at the validation-selected pass, with the point validation chooses."""

from __future__ import annotations

from typing import Any

from services.study_stats.common import as_float


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


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
            if not all(as_float(a["params"].get(param)) is not None for a in vas):
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
