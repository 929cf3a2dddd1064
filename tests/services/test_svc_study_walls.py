"""A study's wall split: the runs' parts summed, the median per-run overhead, the line."""

from __future__ import annotations

import pytest

from services.study_stats import format_wall_totals, wall_totals
from trainer.report import wall_split


def test_wall_split_parts_add_up_and_startup_is_the_remainder():
    t = {"data_s": 1.0, "training_s": 5.0, "evaluation_s": 2.0, "checkpoint_s": 0.5, "setup_s": 9.0}
    s = wall_split(10.0, t, waiting_s=3.0)
    assert s["startup_s"] == pytest.approx(1.5) and s["wall_s"] == pytest.approx(13.0)
    warm = wall_split(10.0, t, startup_s=20.0)  # a group's start-up charged to its first run
    assert warm["startup_s"] == pytest.approx(21.5) and warm["wall_s"] == pytest.approx(30.0)


def test_totals_and_median_overhead():
    runs = {
        "a": wall_split(30.0, {"training_s": 4.0, "evaluation_s": 1.0}, startup_s=0.0),
        "b": wall_split(8.0, {"training_s": 4.0, "evaluation_s": 1.0}),
        "c": wall_split(
            7.0, {"training_s": 4.0, "evaluation_s": 2.0}, waiting_s=30.0
        ),  # queued: not overhead
    }
    t = wall_totals(runs, 80.0)
    assert t["training_s"] == 12.0 and t["evaluation_s"] == 4.0 and t["runs"] == 3
    assert t["runs_wall_s"] == 75.0 and t["waiting_s"] == 30.0
    assert t["overhead_median_s"] == 3.0  # overheads 25, 3, 1
    line = format_wall_totals(t)
    # shares of the runs' own 45 s (75 s of walls less 30 s queued)
    assert line.startswith("time: 3 runs ran 45.0 s (the study took 80.0 s): training 12.0 s (27%)"), line
    assert "; queued 30.0 s in all;" in line
    assert line.endswith("median 3.0 s"), line
    assert format_wall_totals(wall_totals({})) == "time: no run finished"
    assert format_wall_totals(wall_totals(runs, 600.0)).startswith(
        "time: 3 runs ran 0.8 min (the study took 10.0 min): training 0.2 min (27%)"
    )


def test_a_finished_runs_wall_split_reaches_its_job_summary():
    from services.job_events import summarize_progress
    from services.metrics_bus import progress_from_results
    from trainer.results import RunResult

    split = wall_split(9.0, {"training_s": 4.0, "evaluation_s": 1.0})
    results = RunResult.model_validate({"passes": [{"pass": 0, "test_ne": 0.9}], "wall_split": split})
    summary = summarize_progress(progress_from_results(results))
    assert summary["wall_split"] == split and summary["passes"][0]["test_ne"] == 0.9
    assert "wall_split" not in summarize_progress(progress_from_results(RunResult()))
