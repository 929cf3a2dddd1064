"""Where a study's time went: its runs' wall split summed, and the line that says it."""

from __future__ import annotations

from typing import Any


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
