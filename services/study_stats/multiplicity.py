"""Multiplicity and power: Holm's step-down adjustment over a comparison's arms (the
verdict of each arm), and the power of the paired t-test at Holm's first step (the
smallest Δ the study's seeds detect, the seeds a given Δ needs)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import optimize, stats

from services.study_stats.common import ALPHA, POWER


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


def power_of(
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
