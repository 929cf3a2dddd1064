"""Reference NE beside the arms: the oracle (synthetic data's true probabilities) and
the reference predictors (the constant click rate, a logistic regression)."""

from __future__ import annotations

from typing import Any

import numpy as np

from services.study_stats.common import as_float


def reference_ne(
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
                if as_float(v) is not None and key in ("train_ne", "val_ne", "test_ne"):
                    found.setdefault(str(name), {}).setdefault(key, []).append(float(v))
    return {name: {split: float(np.mean(v)) for split, v in splits.items()} for name, splits in found.items()}


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
