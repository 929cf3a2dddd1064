"""What the study statistics share: the confidence, the strata, the notes, and the
helpers that read a number or a mean over seeds (plain data, no Redis)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

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


def as_float(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def mean_of(vals: list[float | None]) -> float | None:
    xs = [v for v in (as_float(x) for x in vals) if v is not None]
    return float(np.mean(xs)) if xs else None


def sd_of(vals: list[float | None]) -> float | None:
    """Sample sd over seeds (ddof 1); None with fewer than two values."""
    xs = [v for v in (as_float(x) for x in vals) if v is not None]
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else None


def validation_key(d: dict[str, Any] | None, label: str) -> tuple[float, str]:
    """Sort key of a choice: the mean validation Δ (lower is better), never test NE."""
    m = d.get("mean") if d else None
    return (m if m is not None else math.inf, label)
