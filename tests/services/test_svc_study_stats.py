"""Study statistics against references: scipy's paired t-test interval and a direct numpy
computation with the tabulated t quantile; one seed; selection by validation NE; curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from services.study_stats import ONE_SEED_NOTE as ONE_SEED
from services.study_stats import (
    analyze,
    answer_sentence,
    format_table,
    paired_delta,
    selected_pass,
    t_interval,
    to_csv,
    to_markdown,
)

# t(0.975, df) from a printed table (Student's t, two-sided 95%)
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262}


@pytest.mark.parametrize("n", [2, 3, 4, 5, 10])
def test_paired_interval_matches_scipy_and_a_numpy_reference(n):
    rng = np.random.default_rng(n)
    base = rng.normal(0.93, 0.004, n)
    arm = base + rng.normal(-0.003, 0.002, n)
    d = paired_delta(dict(enumerate(arm)), dict(enumerate(base)))
    # scipy: the confidence interval of a paired t-test is the interval of the mean difference
    ci = stats.ttest_rel(arm, base).confidence_interval(0.95)
    assert d["ci_low"] == pytest.approx(ci.low, rel=1e-12) and d["ci_high"] == pytest.approx(
        ci.high, rel=1e-12
    )
    # numpy by hand: mean +- t * sd / sqrt(n), t from the table
    diff = arm - base
    half = T_TABLE[n - 1] * diff.std(ddof=1) / math.sqrt(n)
    assert d["mean"] == pytest.approx(diff.mean(), abs=1e-15)
    assert d["ci_low"] == pytest.approx(diff.mean() - half, abs=1e-3 * half)
    assert d["ci_high"] == pytest.approx(diff.mean() + half, abs=1e-3 * half)
    assert d["favouring"] == int((diff < 0).sum()) and d["n"] == n
    assert d["excludes_zero"] == (d["ci_high"] < 0 or d["ci_low"] > 0)


def test_pairing_uses_only_seeds_both_finished_and_one_seed_has_no_interval():
    d = paired_delta({0: 0.90, 1: 0.91, 2: None}, {0: 0.92, 1: 0.92, 2: 0.93, 3: 0.95})
    assert d["seeds"] == [0, 1] and d["per_seed"] == pytest.approx([-0.02, -0.01])
    one = paired_delta({0: 0.90}, {0: 0.92})
    assert one["n"] == 1 and one["ci_low"] is None and one["ci_high"] is None and one["sd"] is None
    assert "one seed" in one["note"] and not one["excludes_zero"]
    assert paired_delta({0: 0.9}, {1: 0.9}) is None
    assert t_interval([1.0]) is None


def test_selected_pass_is_the_lowest_validation_ne_earliest_on_ties():
    passes = [{"pass": 0, "val_ne": 0.95}, {"pass": 1, "val_ne": 0.93}, {"pass": 2, "val_ne": 0.93}]
    assert selected_pass(passes) == 1
    assert selected_pass(passes, upto=1) == 0
    assert selected_pass([{"pass": 0, "test_ne": 0.9}]) is None  # no validation NE: no selection


def _study(values):
    """values: arm -> seed -> per-pass test NE."""
    arms = [
        {
            "key": "baseline",
            "variant": "baseline",
            "variant_index": -1,
            "label": "baseline",
            "params": {},
            "is_baseline": True,
        },
    ]
    for i, w in enumerate((1e-4, 1e-3)):
        arms.append(
            {
                "key": f"v0.{i}",
                "variant": "sparse_l2",
                "variant_index": 0,
                "label": f"sparse_l2 weight={w:g}",
                "params": {"sparse_l2.weight": w},
                "is_baseline": False,
            }
        )
    runs, passes = [], {}
    for arm, by_seed in values.items():
        for seed, nes in by_seed.items():
            key = f"{arm}/s{seed}"
            runs.append({"key": key, "arm": arm, "seed": seed})
            passes[key] = [
                {"pass": i, "test_ne": ne, "val_ne": ne + 0.001, "test_ne_by_stratum": {"rare": ne + 0.01}}
                for i, ne in enumerate(nes)
            ]
    return arms, runs, passes


def test_analyze_per_pass_strata_selection_curves_sentence_and_csv():
    vals = {
        "baseline": {0: [0.93, 0.95], 1: [0.94, 0.96], 2: [0.935, 0.955]},
        "v0.0": {0: [0.929, 0.951], 1: [0.941, 0.957], 2: [0.934, 0.954]},
        "v0.1": {0: [0.925, 0.935], 1: [0.935, 0.945], 2: [0.93, 0.94]},
    }
    arms, runs, passes = _study(vals)
    res = analyze(arms, runs, passes, 2)
    p2 = {r["arm"]: r for r in res["per_pass"][1]["arms"]}
    ref = np.array(vals["v0.1"][0][1:] + vals["v0.1"][1][1:] + vals["v0.1"][2][1:]) - np.array(
        [0.95, 0.96, 0.955]
    )
    d = p2["v0.1"]["delta_test_ne"]
    ci = stats.ttest_rel(ref + [0.95, 0.96, 0.955], [0.95, 0.96, 0.955]).confidence_interval()
    assert d["mean"] == pytest.approx(ref.mean()) and d["ci_high"] == pytest.approx(ci.high)
    assert p2["v0.1"]["strata"]["test_ne"]["rare"]["delta"]["mean"] == pytest.approx(ref.mean())
    assert p2["baseline"]["mean_test_ne"] == pytest.approx(np.mean([0.95, 0.96, 0.955]))
    assert "delta_test_ne" not in p2["baseline"]
    # validation picks pass 1 for the baseline, pass 1 for v0.1 too (its val NE rises less but rises)
    sel = {r["arm"]: r for r in res["selected"]}
    assert sel["baseline"]["selected_pass_per_seed"] == {"0": 1, "1": 1, "2": 1}
    assert sel["v0.1"]["delta_test_ne_at_selected"]["mean"] == pytest.approx(
        np.mean([0.925 - 0.93, 0.935 - 0.94, 0.93 - 0.935])
    )
    (curve,) = res["curves"]
    assert curve["param"] == "sparse_l2.weight" and [p["value"] for p in curve["points"]] == [1e-4, 1e-3]
    assert curve["points"][1]["per_pass"][1]["mean"] == pytest.approx(ref.mean())
    s = res["per_pass"][1]["sentence"]
    assert s.startswith("After 2 passes: beats the baseline: sparse_l2 weight=0.001 by ") and "3/3 seeds" in s
    assert "weight=0.0001 by" not in s  # its interval contains 0
    text = format_table(res)
    assert "after 2 pass(es)" in text and "at the pass validation NE selects" in text
    rows = to_csv(res).splitlines()
    assert rows[0].startswith(
        "pass,arm,label,mean_test_ne,delta_test_ne,ci_low,ci_high,seeds,seeds_favouring"
    )
    assert len(rows) == 1 + 2 * 3
    md = to_markdown(res).splitlines()
    assert md[0].startswith("| arm | 1 pass: Δ test NE") and md[0].endswith(
        "| at the validation-selected pass |"
    )
    table = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in md[2:5]}
    assert table["baseline"][1] == f"{np.mean([0.95, 0.96, 0.955]):.4f}"
    assert (
        table["sparse_l2 weight=0.001"][1]
        == f"**{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] 3/3**"
    )
    assert not table["sparse_l2 weight=0.0001"][1].startswith("**")  # its interval contains 0
    assert f"- {s}" in md
    means = next(i for i, line in enumerate(md) if line.startswith("| arm | test NE after 1"))
    assert md[means + 2] == (
        f"| baseline | {np.mean([0.93, 0.94, 0.935]):.4f} | {np.mean([0.95, 0.96, 0.955]):.4f} | "
        f"{np.mean([0.93, 0.94, 0.935]):.4f} |"  # validation selects the first pass
    )


def test_sentence_says_when_nothing_beats_the_baseline():
    rows = [
        {"arm": "baseline", "label": "baseline"},
        {
            "arm": "v0",
            "label": "dropout",
            "delta_test_ne": {"mean": 0.004, "ci_low": 0.001, "ci_high": 0.007, "n": 3, "favouring": 0},
        },
    ]
    s = answer_sentence(3, rows, 3)
    assert "no variant beats the baseline" in s and "worse than the baseline: dropout (+0.0040)" in s


def test_markdown_cli_renders_a_study_json(tmp_path, capsys):
    import json

    from services.study_stats import main

    arms, runs, passes = _study({"baseline": {0: [0.93]}, "v0.0": {0: [0.92]}, "v0.1": {0: [0.94]}})
    (tmp_path / "study.json").write_text(json.dumps({"results": analyze(arms, runs, passes, 1)}))
    assert main([str(tmp_path / "study.json")]) == 0
    out = capsys.readouterr().out
    assert "| sparse_l2 weight=0.0001 | -0.0100 |" in out and ONE_SEED in out
