"""Strength search and the tuned baseline (trainer/study_search.py), pure: the search over
a known response curve finds its optimum within the budget, confirmation seeds are
disjoint from the search's, test NE never changes a choice, a restart regenerates the
same runs, fixed-grid studies are untouched, and spec errors name what to change."""

from __future__ import annotations

import math

import pytest

from trainer.errors import SpecError
from trainer.study_search import next_runs, schedule_runs
from trainer.study_spec import SearchSpec, parse_study

OPT = -3.3  # log10 of the synthetic curve's best weight


def curve(run, *, test_sign: float = 1.0) -> list[dict]:
    """Per-pass results of one run on a known response curve: the baseline's val NE
    0.9 + 0.001 seed, rising after pass 1; a searched sparse_l1 weight w adds
    0.002 (log10 w - OPT)^2 - 0.006; a tuned sparse lr, 0.003 log2(lr / 0.1)^2.
    ``test_sign`` = -1 makes test NE the mirror image of validation NE (an adversary)."""
    a = run.arm_obj
    w = (a.params or {}).get("sparse_l1.weight") if a is not None else None
    ne = 0.9 + 0.001 * run.seed
    if w:
        ne += 0.002 * (math.log10(w) - OPT) ** 2 - 0.006
    lr = (run.overrides or {}).get("training.sparse_optimizer.lr")
    if lr:
        ne += 0.003 * math.log2(lr / 0.1) ** 2
    return [
        {"pass": 0, "val_ne": ne, "test_ne": test_sign * ne},
        {"pass": 1, "val_ne": ne + 0.01, "test_ne": test_sign * (ne + 0.01)},
    ]


def study(rng=None, search=None, **kw) -> dict:
    v: dict = {"regularizers": [{"type": "sparse_l1", "weight": rng or {"log_range": [1e-6, 1e-1]}}]}
    if search is not None:
        v["search"] = search
    return {"base": {}, "seeds": 3, "passes": 2, "variants": [v], **kw}


def drive(exp, results=curve):
    """Run every stage to the end as the executors do; returns the final Stages and the results."""
    finished: dict = {}
    for _ in range(50):
        st = next_runs(exp, finished)
        new = [r for r in st.runs if r.key not in finished]
        for r in new:
            finished[r.key] = results(r)
        if st.done and not new:
            return st, finished
    raise AssertionError("the stages never ended")


def test_search_finds_the_optimum_of_a_known_curve_within_the_budget():
    exp = parse_study(study())
    plan = exp.plan()
    (s_plan,) = plan["stages"]["search"]
    assert s_plan["max_runs_per_round"] == schedule_runs(SearchSpec()) == [10, 14, 18]
    assert plan["runs"] == 3 + 42 + 3 + 6  # baseline on 3 seeds, search, confirmation, search baseline
    st, finished = drive(exp)
    (s,) = st.search
    assert s["stopped"] == "rounds" and len(s["rounds"]) == 3
    assert s["runs_used"] <= s["budget_runs"] == 42
    assert abs(math.log10(s["chosen"]) - OPT) < 0.15, s[
        "chosen"
    ]  # the grid's best 1e-6..1e-1 point is 10^-3.5
    # every run the study made is within the plan's bound
    assert len(finished) <= plan["runs"]
    # the searched curve: each point's mean validation Δ; the chosen one is the lowest of the last round
    last = s["rounds"][-1]["points"]
    by_value = {p["value"]: p for p in s["points"]}
    assert s["chosen"] == min(last, key=lambda v: by_value[v]["val_delta_mean"])


def test_a_small_budget_stops_the_search_and_is_never_exceeded():
    exp = parse_study(study(search={"points": 4, "rounds": 4, "seeds_per_round": 1, "budget_runs": 9}))
    st, finished = drive(exp)
    (s,) = st.search
    assert s["runs_used"] <= 9 and s["stopped"] == "budget"
    assert sum(1 for k in finished if k.startswith("v0~") and int(k.split("/s")[1]) not in (0, 1, 2)) <= 9


def test_confirmation_seeds_are_the_studys_own_and_disjoint_from_the_search_seeds():
    exp = parse_study(study(seeds=[0, 7, 42]))
    st, _ = drive(exp)
    search_seeds = {r.seed for r in st.runs if r.stage == "search"}
    confirm = [r for r in st.runs if r.stage == "confirm"]
    assert {r.seed for r in confirm} == {0, 7, 42}
    assert not search_seeds & {0, 7, 42} and min(search_seeds) == 43
    (s,) = st.search
    assert set(s["search_seeds"]) == search_seeds - {0, 7, 42}
    # the answer is computed from the fixed arms and the confirmation only
    assert {r.stage for r in st.analysis_runs()} == {"main", "confirm"}
    assert [a.key for a in st.arms] == ["baseline", confirm[0].arm]
    assert st.arms[1].label.endswith("(searched)")


def test_test_ne_never_changes_a_choice():
    """Mirror test NE (the best on test becomes the worst): the same runs, the same
    search, the same tuned values. Fails if any choice reads test NE."""
    spec = study(tune_baseline={"grid": {"training.sparse_optimizer.lr": [0.02, 0.1, 0.5]}, "seeds": 2})
    exp = parse_study(spec)
    st, _ = drive(exp)
    st2, _ = drive(exp, lambda r: curve(r, test_sign=-1.0))
    assert [r.key for r in st.runs] == [r.key for r in st2.runs]
    assert st.search[0]["chosen"] == st2.search[0]["chosen"]
    assert st.tuned["chosen"] == st2.tuned["chosen"] == {"training.sparse_optimizer.lr": 0.1}


def test_tuned_baseline_runs_first_and_every_later_run_inherits_its_choice():
    spec = study(
        base={"model": {"interaction": "concat"}},
        variants=[{"regularizers": [{"type": "sparse_l2", "weight": [1e-4, 1e-3]}]}],
        tune_baseline={
            "grid": {"training.sparse_optimizer.lr": [0.04, 0.1], "model.embedding_dim": [8, 16]},
            "passes": 1,
            "seeds": 2,
        },
    )
    exp = parse_study(spec)
    assert exp.plan()["stages"]["tune_baseline"]["runs"] == 8 and exp.plan()["runs"] == 8 + 9
    st = next_runs(exp, {})
    assert not st.done and {r.stage for r in st.runs} == {"tune"} and len(st.runs) == 8
    assert {r.seed for r in st.runs} == {3, 4} and all(r.passes == 1 for r in st.runs)
    assert exp.job_spec(st.runs[0]).training.num_passes == 1
    st, _ = drive(exp)
    chosen = st.tuned["chosen"]
    assert chosen == {"training.sparse_optimizer.lr": 0.1, "model.embedding_dim": 8}  # ties: grid order
    for r in st.runs:
        if r.stage != "tune":
            job = exp.job_spec(r)
            assert job.training.sparse_optimizer.lr == 0.1 and job.training.num_passes == 2


def test_restart_regenerates_the_same_runs_from_the_same_results():
    exp = parse_study(study())
    finished: dict = {}
    st = next_runs(exp, finished)
    for r in st.runs[:5]:  # some of round 1 ended, then the service restarted
        finished[r.key] = curve(r)
    again = next_runs(parse_study(study()), dict(finished))
    assert [r.key for r in again.runs] == [r.key for r in st.runs] and again.stage == "search round 1"
    # keys follow from the strength and the seed
    assert any(r.key == "v0~1e-06/s3" for r in st.runs)


def test_fixed_grid_studies_are_not_staged():
    exp = parse_study(study(rng=[1e-4, 1e-3]))
    assert not exp.staged and "stages" not in exp.plan() and exp.max_runs() == len(exp.runs) == 9
    assert all(r.stage is None for r in exp.runs) and "stage" not in exp.runs[0].to_dict()


@pytest.mark.parametrize(
    "variant,msg",
    [
        (
            {"regularizers": [{"type": "sparse_l1", "weight": {"log_range": [0, 1e-2]}}]},
            "variants.0.regularizers.0.weight.log_range: low must be > 0",
        ),
        (
            {"regularizers": [{"type": "sparse_l1", "weight": {"range": [1e-2, 1e-3]}}]},
            "variants.0.regularizers.0.weight.range: low (0.01) must be below high (0.001)",
        ),
        (
            {"regularizers": [{"type": "sparse_l1", "weight": {"range": [1e-3]}}]},
            "variants.0.regularizers.0.weight.range: give two numbers [low, high]",
        ),
        (
            {"regularizers": [{"type": "sparse_l1", "weight": {"log_rnage": [1e-3, 1]}}]},
            "variants.0.regularizers.0.weight: a range is {log_range: [low, high]} or {range: [low, high]}",
        ),
        (
            {"regularizers": [{"type": "sparse_l2", "weight": 1e-4, "decouple": {"range": [0, 1]}}]},
            "variants.0.regularizers.0.decouple: a range is only allowed over numeric parameters",
        ),
        (
            {
                "regularizers": [
                    {"type": "sparse_l1", "weight": {"log_range": [1e-6, 1e-2]}},
                    {"type": "max_norm", "c": [0.5, 1.0]},
                ]
            },
            "variants.0: a range (sparse_l1.weight) and a grid (c) in one variant",
        ),
        (
            {
                "regularizers": [
                    {"type": "sparse_l1", "weight": {"log_range": [1e-6, 1e-2]}},
                    {"type": "max_norm", "c": {"range": [0.5, 2.0]}},
                ]
            },
            "variants.0: 2 ranges (sparse_l1.weight, max_norm.c); a variant searches one parameter",
        ),
        (
            {"regularizers": [{"type": "sparse_l2", "weight": {"log_range": [1e-4, 50]}}]},
            "variants.0.regularizers.0.weight: Input should be less than or equal to 10",
        ),
        (
            {"regularizers": [{"type": "sparse_l1", "weight": 1e-4}], "search": {"points": 3}},
            "variants.0.search: this variant has no range to search; remove search",
        ),
        (
            {
                "regularizers": [{"type": "sparse_l1", "weight": {"log_range": [1e-6, 1e-2]}}],
                "search": {"points": 1},
            },
            "variants.0.search.points: Input should be greater than or equal to 2",
        ),
        (
            {
                "regularizers": [{"type": "sparse_l1", "weight": {"log_range": [1e-6, 1e-2]}}],
                "search": {"points": 5, "seeds_per_round": 2, "budget_runs": 6},
            },
            "variants.0.search.budget_runs: 6 runs cannot hold round 1 of variants.0 (points 5 x "
            "seeds_per_round 2 = 10 runs); raise it to at least 10",
        ),
    ],
)
def test_spec_errors_name_the_field_and_what_to_change(variant, msg):
    with pytest.raises(SpecError) as e:
        parse_study({"base": {}, "variants": [variant]})
    assert msg in e.value.message, e.value.message


@pytest.mark.parametrize(
    "tune,msg",
    [
        (
            {"grid": {"training.lr": [0.1]}},
            "tune_baseline.grid.training.lr: not a tunable field; choose from",
        ),
        ({"grid": {"model.embedding_dim": []}}, "tune_baseline.grid.model.embedding_dim: an empty list"),
        ({"grid": {"model.embedding_dim": [8, 8]}}, "repeated values [8, 8]"),
        (
            {"grid": {"model.embedding_dim": [6]}},
            "tune_baseline.grid: model.embedding_dim: Input should be a multiple of 4",
        ),
        (
            {"grid": {"model.embedding_dim": [8]}},
            "tune_baseline.grid: model.dense_arch: the last layer (16) must equal model.embedding_dim (8)",
        ),
        (
            {"grid": {"model.embedding_dim": [8]}, "passes": 0},
            "tune_baseline.passes: Input should be greater",
        ),
    ],
)
def test_tune_baseline_errors(tune, msg):
    with pytest.raises(SpecError) as e:
        parse_study({"base": {}, "variants": [], "tune_baseline": tune})
    assert msg in e.value.message, e.value.message


def test_the_example_searched_study_plans_its_stages():
    from pathlib import Path

    from trainer.study_spec import load_study

    exp = load_study(Path(__file__).resolve().parents[2] / "examples" / "study_search.yaml")
    plan = exp.plan()
    assert plan["runs"] == 85 and plan["stages"]["tune_baseline"]["runs"] == 18
    assert plan["stages"]["search"][0]["max_runs"] == 24 and plan["stages"]["search_baseline_runs"] == 4


def test_an_integer_parameter_is_searched_over_integers():
    exp = parse_study(
        {
            "base": {},
            "variants": [{"regularizers": [{"type": "min_count", "k": {"range": [1, 9]}}]}],
            "seeds": 1,
        }
    )
    st, _ = drive(
        exp,
        lambda r: [
            {
                "pass": 0,
                "val_ne": 0.9 + 0.001 * abs((r.arm_obj.params["min_count.k"] if r.arm_obj else 0) - 4),
            }
        ],
    )
    ks = [p["value"] for p in st.search[0]["points"]]
    assert all(k == int(k) for k in ks) and len(ks) == len(set(ks))
    assert exp.job_spec(next(r for r in st.runs if r.stage == "confirm")).regularizers[0].k == 4


def test_a_search_whose_runs_all_fail_chooses_nothing_and_confirms_nothing():
    exp = parse_study(study(search={"points": 3, "rounds": 2, "seeds_per_round": 1}))
    st, _ = drive(exp, lambda r: None if r.stage == "search" and r.arm != "baseline" else curve(r))
    (s,) = st.search
    assert st.done and s["chosen"] is None and s["stopped"] == "no validation results"
    assert not [r for r in st.runs if r.stage == "confirm"] and [a.key for a in st.arms] == ["baseline"]
