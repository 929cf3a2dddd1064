"""The answer as CSV: the headline rows, then one row per (pass count, arm)."""

from __future__ import annotations

import csv
import io
from typing import Any

from services.study_stats.common import STRATA
from services.study_stats.tables import headline_rows

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

    for r in headline_rows(results):
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
