"""Study statistics against references: scipy's paired t-test interval and a direct numpy
computation with the tabulated t quantile; one seed; selection by validation NE; curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from services.study_stats import ONE_SEED_NOTE as ONE_SEED
from services.study_stats import (
    adjust,
    analyze,
    answer_sentence,
    detectable_delta,
    fmt_p,
    format_table,
    holm,
    paired_delta,
    seeds_needed,
    selected_pass,
    t_interval,
    t_pvalue,
    to_csv,
    to_markdown,
    ttest_power,
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
    # Holm over the two arms at pass 2, against statsmodels
    raw = [p2[a]["delta_test_ne"]["p"] for a in ("v0.0", "v0.1")]
    ref_adj = multipletests(raw, alpha=0.05, method="holm")[1]
    assert [p2[a]["delta_test_ne"]["p_adj"] for a in ("v0.0", "v0.1")] == pytest.approx(ref_adj)
    text = format_table(res)
    assert text.startswith(res["headline"]["sentence"])
    assert "after 2 pass(es), vs the baseline after 2" in text and "what you would ship" in text
    rows = to_csv(res).splitlines()
    assert rows[0].startswith(
        "pass,arm,label,mean_test_ne,delta_test_ne,ci_low,ci_high,seeds,seeds_favouring"
    )
    assert len(rows) == 1 + 3 + 2 * 3  # the headline rows first, then per pass count
    assert rows[1].startswith("selected,baseline,")
    md = to_markdown(res).splitlines()
    assert md[0] == f"**{res['headline']['sentence']}**"
    same = md.index("Same pass: each arm after k passes vs the baseline after k passes.")
    assert md[same + 2].startswith("| arm | 1 pass: Δ test NE")
    table = {
        line.strip("| ").split(" | ")[0]: line.strip("| ").split(" | ")[1:]
        for line in md[same + 4 : same + 7]
    }
    assert table["baseline"][1] == f"{np.mean([0.95, 0.96, 0.955]):.4f}"
    assert (
        table["sparse_l2 weight=0.001"][1]
        == f"**{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] p={fmt_p(d['p_adj'])} 3/3**"
    )
    assert not table["sparse_l2 weight=0.0001"][1].startswith("**")  # its interval contains 0
    assert f"- {s}" in md
    means = next(i for i, line in enumerate(md) if line.startswith("| arm | test NE after 1"))
    assert md[means + 2] == (
        f"| baseline | {np.mean([0.93, 0.94, 0.935]):.4f} | {np.mean([0.95, 0.96, 0.955]):.4f} | "
        f"{np.mean([0.93, 0.94, 0.935]):.4f} |"  # validation selects the first pass
    )


def test_sentence_says_when_nothing_beats_the_baseline():
    d = {"mean": 0.004, "ci_low": 0.001, "ci_high": 0.007, "n": 3, "favouring": 0, "p": 0.01}
    rows = [{"arm": "baseline", "label": "baseline"}, {"arm": "v0", "label": "dropout", "delta_test_ne": d}]
    adjust([d])
    s = answer_sentence(3, rows, 3)
    assert "no variant beats the baseline" in s and "worse than the baseline: dropout (+0.0040" in s
    # the same interval among 10 arms: Holm x10 makes it no longer "worse"
    ds = [dict(d)] + [dict(d, p=0.9, mean=0.0) for _ in range(9)]
    adjust(ds)
    assert ds[0]["p_adj"] == pytest.approx(0.1) and ds[0]["verdict"] == "no difference"


def test_markdown_cli_renders_a_study_json(tmp_path, capsys):
    import json

    from services.study_stats import main

    arms, runs, passes = _study({"baseline": {0: [0.93]}, "v0.0": {0: [0.92]}, "v0.1": {0: [0.94]}})
    (tmp_path / "study.json").write_text(json.dumps({"results": analyze(arms, runs, passes, 1)}))
    assert main([str(tmp_path / "study.json")]) == 0
    out = capsys.readouterr().out
    assert "| sparse_l2 weight=0.0001 | -0.0100 |" in out and ONE_SEED in out


# --------------------------------------------------------------------------- multiplicity, power


def test_holm_matches_statsmodels_and_leaves_missing_p_out():
    rng = np.random.default_rng(7)
    for m in (1, 2, 5, 38):
        p = list(rng.uniform(0, 0.2, m) ** 2)
        assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]), abs=1e-15)
    p = [0.01, None, 0.04, 0.03]
    ref = multipletests([0.01, 0.04, 0.03], method="holm")[1]
    assert holm(p) == pytest.approx([ref[0], None, ref[1], ref[2]])


def test_p_value_is_scipys_paired_t_test_and_degenerate_deltas_are_handled():
    rng = np.random.default_rng(3)
    base = rng.normal(0.93, 0.01, 5)
    arm = base + rng.normal(-0.002, 0.003, 5)
    d = paired_delta(dict(enumerate(arm)), dict(enumerate(base)))
    assert d["p"] == pytest.approx(stats.ttest_rel(arm, base).pvalue, rel=1e-12)
    assert t_pvalue([0.0, 0.0, 0.0]) == 1.0 and t_pvalue([0.01, 0.01]) == 0.0 and t_pvalue([0.1]) is None


@pytest.mark.parametrize("n,m", [(3, 1), (3, 38), (5, 10), (10, 3)])
def test_power_line_matches_statsmodels(n, m):
    # statsmodels' TTestPower.power is the reference; its solve_power's root finder does
    # not converge at Holm's small levels (n=3, alpha=0.05/38 gives 5.5 where power(5.5)
    # is 0.43), so the solutions are checked by their power instead
    alpha = 0.05 / m
    tp = TTestPower()
    assert ttest_power(1.3, n, alpha) == pytest.approx(tp.power(1.3, n, alpha), rel=1e-6)
    assert tp.power(detectable_delta(0.002, n, alpha) / 0.002, n, alpha) == pytest.approx(0.8, abs=1e-6)
    need = seeds_needed(0.004, 0.003, alpha)
    assert tp.power(0.004 / 0.003, need, alpha) >= 0.8 > tp.power(0.004 / 0.003, need - 1, alpha)


# --------------------------------------------------------------------------- the headline


def _make(spec, variants=("sparse_l2",), extra=None):
    """spec: arm -> seed -> [(val NE, test NE) per pass]; arm "v{i}.{j}": variant i, point j."""
    arms = [
        {
            "key": "baseline",
            "variant": "baseline",
            "variant_index": -1,
            "label": "baseline",
            "params": {},
            "is_baseline": True,
        }
    ]
    for key in spec:
        if key == "baseline":
            continue
        vi, pj = (int(x) for x in key[1:].split("."))
        w = 10.0 ** -(4 - pj)
        arms.append(
            {
                "key": key,
                "variant": variants[vi],
                "variant_index": vi,
                "label": f"{variants[vi]} weight={w:g}",
                "params": {f"{variants[vi]}.weight": w},
                "is_baseline": False,
            }
        )
    runs, passes = [], {}
    for arm, by_seed in spec.items():
        for seed, vt in by_seed.items():
            key = f"{arm}/s{seed}"
            runs.append({"key": key, "arm": arm, "seed": seed})
            passes[key] = [
                {"pass": i, "val_ne": v, "test_ne": t, **((extra or {}).get(key, {}).get(i, {}))}
                for i, (v, t) in enumerate(vt)
            ]
    return arms, runs, passes


def test_headline_compares_each_arm_at_its_selected_pass_with_the_baseline_stopped_early():
    # the baseline overfits after pass 1; sparse_l2 1e-3 keeps improving until pass 2
    spec = {
        "baseline": {
            s: [(0.950 + e, 0.940 + e), (0.960 + e, 0.950 + e), (0.990, 0.980)]
            for s, e in enumerate((0, 0.004, 0.002))
        },
        "v0.0": {
            s: [(0.951 + e, 0.941 + e), (0.955 + e, 0.946 + e), (0.97, 0.96)]
            for s, e in enumerate((0, 0.004, 0.002))
        },
        "v0.1": {
            s: [(0.955 + e, 0.946 + e), (0.944 + e, 0.935 + e + f), (0.95, 0.94)]
            for s, (e, f) in enumerate(((0, 0.0), (0.004, 0.0006), (0.002, -0.0004)))
        },
    }
    extra = {
        f"v0.1/s{s}": {
            1: {
                "train_ne": 0.8 + s / 100,
                "test_calibration": 1.02,
                "test_auc": 0.74,
                "test_ne_by_stratum": {"rare": 0.99},
            }
        }
        for s in range(3)
    }
    arms, runs, passes = _make(spec, extra=extra)
    res = analyze(arms, runs, passes, 3)
    h = res["headline"]
    sel = {r["arm"]: r for r in res["selected"]}
    assert sel["baseline"]["selected_pass_per_seed"] == {"0": 1, "1": 1, "2": 1}
    assert sel["v0.1"]["selected_pass_per_seed"] == {"0": 2, "1": 2, "2": 2}
    # by hand: test NE at the arm's pass 2 minus the baseline's at its pass 1, per seed
    arm_t = np.array([0.935, 0.939 + 0.0006, 0.937 - 0.0004])
    base_t = np.array([0.940, 0.944, 0.942])
    d = sel["v0.1"]["delta_test_ne_at_selected"]
    assert d["per_seed"] == pytest.approx(list(arm_t - base_t))
    assert d["p"] == pytest.approx(stats.ttest_rel(arm_t, base_t).pvalue)
    ci = stats.ttest_rel(arm_t, base_t).confidence_interval()
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((ci.low, ci.high))
    raw = [sel[a]["delta_test_ne_at_selected"]["p"] for a in ("v0.0", "v0.1")]
    assert d["p_adj"] == pytest.approx(multipletests(raw, method="holm")[1][1])
    assert d["verdict"] == "beats" and d["sd"] == pytest.approx(np.std(arm_t - base_t, ddof=1))
    assert h["ranking"] == ["v0.1", "v0.0"] and h["best"] == "v0.1" and h["beats"] == ["v0.1"]
    assert h["baseline"]["sd_test_ne"] == pytest.approx(np.std(base_t, ddof=1))
    assert h["best_per_variant"] == [
        {"variant": "sparse_l2", "arm": "v0.1", "label": "sparse_l2 weight=0.001"}
    ]
    assert h["sentence"] == (
        "Best at what you would ship: sparse_l2 at weight=0.001 (selects pass 2), "
        f"Δ test NE {d['mean']:+.4f} [95% CI {d['ci_low']:+.4f}, {d['ci_high']:+.4f}, "
        f"Holm-adjusted p {fmt_p(d['p_adj'])}], 3 seeds."
    )
    # more than test NE: train NE, calibration, AUC and strata at the selected pass
    assert sel["v0.1"]["mean_train_ne_at_selected"] == pytest.approx(0.81)
    assert sel["v0.1"]["mean_test_calibration_at_selected"] == pytest.approx(1.02)
    assert sel["v0.1"]["mean_test_auc_at_selected"] == pytest.approx(0.74)
    assert sel["v0.1"]["strata_test_ne_at_selected"]["rare"]["mean"] == pytest.approx(0.99)
    # power: median sd of Δ over the arms, at Holm's first step (0.05 / 2 arms)
    pw = h["power"]
    sds = [sel[a]["delta_test_ne_at_selected"]["sd"] for a in ("v0.0", "v0.1")]
    sds = [x for x in sds if x > 1e-12]  # v0.0's Δ is the same every seed: no spread to read
    assert pw["sd_delta"] == pytest.approx(np.median(sds))
    eff = pw["detectable_delta"] / np.median(sds)
    assert TTestPower().power(eff, 3, 0.025) == pytest.approx(0.8, abs=1e-6)
    assert pw["alpha"] == pytest.approx(0.025)
    assert pw["target"]["arm"] == "v0.1" and pw["target"]["seeds_needed"] >= 2
    # every output leads with the headline
    md = to_markdown(res)
    assert md.startswith(f"**{h['sentence']}**\n\n| rank | arm | selects pass | Δ val NE |")
    row = next(line for line in md.splitlines() if line.startswith("| 1 | sparse_l2 weight=0.001 (best) |"))
    assert (
        f"**{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]**" in row
        and "| 1.020 | 0.740 |" in row
    )
    assert (
        "Power: with 3 seeds and Holm over 2 arms" in md and "chosen on validation" not in md.split("\n")[0]
    )
    assert "made on validation NE" in md
    text = format_table(res)
    assert text.splitlines()[0] == h["sentence"] and "Power:" in text and "1.020" in text
    assert to_csv(res).splitlines()[2].startswith("selected,v0.1,sparse_l2 weight=0.001,")


def test_headline_says_when_no_regularizer_beats_stopping_early():
    # the arm never beats the baseline's pass 1 on validation
    spec = {
        "baseline": {s: [(0.95 + e, 0.94 + e), (0.97, 0.96)] for s, e in enumerate((0, 0.003, 0.001))},
        "v0.0": {
            s: [(0.952 + e, 0.941 + e), (0.955 + e, 0.944 + e)] for s, e in enumerate((0, 0.0031, 0.0014))
        },
    }
    res = analyze(*_make(spec), 2)
    assert res["headline"]["best"] is None and res["headline"]["closest"] == "v0.0"
    assert res["headline"]["sentence"].startswith(
        "No regularizer beats stopping the baseline early: on validation none is below the baseline"
    )
    # below on validation but not significant on test: still "No regularizer beats ..."
    spec["v0.0"] = {
        s: [(0.949 + e, 0.94 + e + f), (0.96, 0.95)]
        for s, (e, f) in enumerate(((0, 0.002), (0.003, -0.003), (0.001, 0.0)))
    }
    res = analyze(*_make(spec), 2)
    assert res["headline"]["best"] == "v0.0"
    assert res["headline"]["sentence"].startswith(
        "No regularizer beats stopping the baseline early: the best on validation is sparse_l2 at weight=0.0001"
    )


def test_choices_use_validation_only_permuting_test_ne_changes_no_choice():
    """Fails if any choice (selected passes, ranking, best arm, best strength per
    variant, the chosen point of each strength curve) reads test NE."""
    rng = np.random.default_rng(11)
    spec = {"baseline": {}}
    for vi in range(3):
        for pj in range(3):
            spec[f"v{vi}.{pj}"] = {}
    for arm in spec:
        for s in range(3):
            spec[arm][s] = [(float(v), float(t)) for v, t in rng.normal(0.95, 0.01, (4, 2))]
    variants = ("sparse_l2", "max_norm", "dropout")
    arms, runs, passes = _make(spec, variants)

    def choices(res):
        h = res["headline"]
        return (
            h["ranking"],
            h["best"],
            h["best_per_variant"],
            [r["selected_pass_per_seed"] for r in res["selected"]],
            [c["chosen"] for c in res["curves"]],
        )

    before = analyze(arms, runs, passes, 4)
    # permute every test NE across all runs and passes; validation NE stays
    flat = [p for k in sorted(passes) for p in passes[k]]
    perm = rng.permutation([p["test_ne"] for p in flat])
    for p, t in zip(flat, perm, strict=True):
        p["test_ne"] = float(t)
    after = analyze(arms, runs, passes, 4)
    assert choices(after) == choices(before)
    assert len(before["headline"]["ranking"]) == 9 and len(before["curves"]) == 3
    # the permutation did change what test NE says (so the check above can fail)
    test_order = lambda res: sorted(  # noqa: E731
        (r for r in res["selected"] if r.get("delta_test_ne_at_selected")),
        key=lambda r: r["delta_test_ne_at_selected"]["mean"],
    )
    assert [r["arm"] for r in test_order(after)] != [r["arm"] for r in test_order(before)]


def test_references_are_collected_and_a_baseline_worse_than_a_constant_is_flagged():
    spec = {
        "baseline": {0: [(1.02, 1.03)], 1: [(1.021, 1.031)]},
        "v0.0": {0: [(1.0, 1.01)], 1: [(1.0, 1.011)]},
    }
    refs = {"references": {"constant": {"val_ne": 1.0, "test_ne": 1.001}, "logistic": {"test_ne": 0.95}}}
    arms, runs, passes = _make(spec, extra={f"{a}/s{s}": {0: refs} for a in spec for s in (0, 1)})
    res = analyze(arms, runs, passes, 1)
    assert res["references"] == {"constant": {"val_ne": 1.0, "test_ne": 1.001}, "logistic": {"test_ne": 0.95}}
    assert any("worse than the constant" in n for n in res["notes"])
    assert "Reference test NE: constant 1.0010; logistic 0.9500" in to_markdown(res)


def test_references_read_the_trainers_results_json_shape():
    """trainer/references.py writes ``validation_ne`` and more fields beside the NEs."""
    spec = {
        "baseline": {0: [(1.02, 1.03)], 1: [(1.021, 1.031)]},
        "v0.0": {0: [(1.0, 1.01)], 1: [(1.0, 1.011)]},
    }
    trainer_refs = {
        "constant": {"click_rate": 0.56, "validation_ne": 1.0, "test_ne": 1.001, "test_auc": 0.5},
        "logistic": {
            "l2": 1e-4,
            "validation_ne": 0.96,
            "test_ne": 0.95,
            "selection_ne_by_l2": {"0.0001": 0.96},
        },
    }
    arms, runs, passes = _make(
        spec, extra={f"{a}/s{s}": {0: {"references": trainer_refs}} for a in spec for s in (0, 1)}
    )
    res = analyze(arms, runs, passes, 1)
    assert res["references"] == {
        "constant": {"val_ne": 1.0, "test_ne": 1.001},
        "logistic": {"val_ne": 0.96, "test_ne": 0.95},
    }
    assert any("worse than the constant" in n for n in res["notes"])


def test_report_page_is_self_contained_and_charts_what_validation_chose():
    import re

    from services.study_report import chart_data, render_report

    rng = np.random.default_rng(5)
    spec = {"baseline": {}, "v0.0": {}, "v0.1": {}, "v1.0": {}, "v1.1": {}}
    for arm in spec:
        for s in range(3):
            spec[arm][s] = [(float(v), float(t)) for v, t in rng.normal(0.95, 0.01, (3, 2))]
    refs = {"references": {"constant": {"test_ne": 0.99}}}
    arms, runs, passes = _make(spec, ("sparse_l2", "max_norm"), extra={"baseline/s0": {0: refs}})
    res = analyze(arms, runs, passes, 3)
    cd = chart_data(res)
    best = [b["arm"] for b in res["headline"]["best_per_variant"]]
    assert [s["arm"] for s in cd["ne"]["series"]] == ["baseline", *best]
    assert [s["arm"] for s in cd["delta"]["series"]] == best
    assert [r["label"] for r in cd["ne"]["refs"]] == ["constant predictor"]
    assert [c["chosen"] for c in cd["curves"]] == [
        next(p["value"] for p in c["points"] if p["arm"] == c["chosen"]) for c in res["curves"]
    ]
    page = render_report({"name": "a <b> study", "results": res})
    assert "a &lt;b&gt; study" in page and "<b> study" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert page.count("<script") == 3 and "uPlot" in page


def test_holm_from_a_published_table_recovers_the_t_test_p(tmp_path, capsys):
    """scripts/holm_from_study_table.py: p from a printed interval, Holm over a column."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "holm_from_study_table.py"
    spec = importlib.util.spec_from_file_location("holm_table", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(2)
    base = rng.normal(0.93, 0.01, 3)
    arms = {f"a{i}": base + rng.normal(-0.004 * i, 0.002, 3) for i in range(4)}
    ds = {k: paired_delta(dict(enumerate(v)), dict(enumerate(base))) for k, v in arms.items()}
    for k, d in ds.items():
        assert mod.cell_p(d["mean"], d["ci_low"], d["ci_high"], 3) == pytest.approx(
            stats.ttest_rel(arms[k], base).pvalue, rel=1e-9
        )
    arms_list = [
        {
            "key": "baseline",
            "variant": "baseline",
            "variant_index": -1,
            "label": "baseline",
            "params": {},
            "is_baseline": True,
        }
    ]
    arms_list += [
        {"key": k, "variant": k, "variant_index": i, "label": k, "params": {}, "is_baseline": False}
        for i, k in enumerate(arms)
    ]
    runs, passes = [], {}
    for k, v in {"baseline": base, **arms}.items():
        for s in range(3):
            runs.append({"key": f"{k}/s{s}", "arm": k, "seed": s})
            passes[f"{k}/s{s}"] = [{"pass": 0, "test_ne": float(v[s])}]
    res = analyze(arms_list, runs, passes, 1)
    md = to_markdown(res)
    (tmp_path / "r.md").write_text(md)
    assert mod.main(["x", str(tmp_path / "r.md")]) == 0
    out = capsys.readouterr().out
    # the same table as hand-edited docs write it, with the typographic minus, reads the same
    assert "-0." in md
    (tmp_path / "u.md").write_text(md.replace("-0.", "\u22120."))
    assert mod.main(["x", str(tmp_path / "u.md")]) == 0
    assert capsys.readouterr().out == out
    for r in res["per_pass"][0]["arms"][1:]:
        d = r["delta_test_ne"]
        if d["ci_high"] < 0 or d["ci_low"] > 0:  # printed with its Holm p, from 4-decimal cells
            line = next(x for x in out.splitlines() if x.strip().startswith(r["label"] + " "))
            assert float(line.split("Holm p ")[1].lstrip("<")) == pytest.approx(d["p_adj"], abs=0.01)


def test_a_search_that_chose_an_end_of_its_range_says_the_best_may_lie_beyond():
    from services.study_stats import search_sentence

    s = {
        "variant": "sparse_l2",
        "param": "sparse_l2.weight",
        "low": 1e-6,
        "high": 1e-2,
        "scale": "log",
        "rounds": [{}, {}],
        "rounds_planned": 2,
        "runs_used": 20,
        "budget_runs": 24,
        "search_seeds": [5, 6],
        "points": [{"value": 1e-6, "val_delta_mean": -0.0003, "seeds": 4}, {"value": 1e-4, "seeds": 4}],
        "chosen": 1e-6,
        "confirmation_seeds": [0, 1],
    }
    assert "at the lower end of the range: the best strength may lie beyond it" in search_sentence(s)
    inside = {**s, "chosen": 1e-4}
    assert "end of the range" not in search_sentence(inside)
    assert "at the upper end" in search_sentence({**s, "chosen": 1e-2})
