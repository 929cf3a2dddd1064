"""Paired differences against the same-seed baseline: the Student-t interval of the
mean Δ, the two-sided paired t-test p, and one arm's Δ over the seeds both runs have."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from services.study_stats.common import CONFIDENCE, ONE_SEED_NOTE, as_float


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


def paired_delta(arm: dict[int, float | None], baseline: dict[int, float | None]) -> dict[str, Any] | None:
    """Mean Δ = arm − baseline over the seeds both have, its 95% t-interval, the
    two-sided paired t-test p, sd of Δ and the seeds favouring the arm.

    Returns None when no seed has both values. ``p_adj`` and ``verdict`` are added by
    :func:`adjust` once the whole comparison is known.
    """
    seeds = sorted(
        s for s in arm if as_float(arm.get(s)) is not None and as_float(baseline.get(s)) is not None
    )
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
