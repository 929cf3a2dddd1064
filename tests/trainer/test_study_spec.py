"""The study spec: grid and seed expansion, the automatic baseline, and validation messages
that name the field (bad grids, unknown parameters, too large, bad base)."""

from __future__ import annotations

import pytest
import yaml

from trainer.errors import SpecError
from trainer.spec import REGULARIZER_TYPES
from trainer.study_spec import MAX_STUDY_RUNS, load_study, parse_study, regularizer_models

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_types_come_from_the_job_spec_union():
    assert set(regularizer_models()) >= set(REGULARIZER_TYPES)


def test_grids_multiply_baseline_is_added_and_seeds_change_only_the_seed():
    exp = parse_study(
        {
            "base": {
                "training": {"num_passes": 5, "seed": 10},
                "regularizers": [{"type": "dropout", "p": 0.1}],
            },
            "variants": [
                {
                    "regularizers": [
                        {"type": "sparse_l2", "weight": [1e-5, 1e-4]},
                        {"type": "max_norm", "c": [1, 2, 4]},
                    ]
                },
                {"name": "sched", "regularizers": [{"type": "lr_schedule", "sparse": [[1, 0.5], [1, 0.1]]}]},
                {"regularizers": [{"type": "lr_schedule", "sparse": [1, 0.5]}]},  # one value, not a grid
            ],
            "seeds": 3,
            "passes": 2,
        }
    )
    assert [a.key for a in exp.arms] == ["baseline"] + [f"v0.{i}" for i in range(6)] + ["v1.0", "v1.1", "v2"]
    assert exp.arms[1].params == {"sparse_l2.weight": 1e-5, "max_norm.c": 1}
    assert exp.arms[6].label == "sparse_l2+max_norm weight=0.0001 c=4"
    assert exp.arms[7].label == "sched sparse=[1,0.5]" and exp.arms[9].params == {}
    assert exp.seeds == [10, 11, 12] and len(exp.runs) == 10 * 3 and exp.passes == 2
    base_job = exp.job_spec(exp.runs[0]).model_dump(mode="json")
    run = next(r for r in exp.runs if r.arm == "v0.5" and r.seed == 12)
    job = exp.job_spec(run).model_dump(mode="json")
    assert job["training"]["seed"] == 12 and job["training"]["num_passes"] == 2
    assert [r["type"] for r in job["regularizers"]] == ["dropout", "sparse_l2", "max_norm"]
    assert job["regularizers"][1]["weight"] == 1e-4 and job["regularizers"][2]["c"] == 4
    # nothing but the seed and the regularizers differs from the baseline: not the data
    for d in (base_job, job):
        d["training"].pop("seed"), d.pop("regularizers")
    assert job == base_job
    assert parse_study({"variants": [], "seeds": [7, 3]}).seeds == [7, 3]
    plan = exp.plan()
    assert plan["runs"] == 30 and plan["estimate"]["train_examples_total"] == 30 * 2 * 100_000


@pytest.mark.parametrize(
    "study, field, words",
    [
        (
            {"variants": [{"regularizers": [{"type": "sparse_l2", "wieght": [1e-4]}]}]},
            "variants.0.regularizers.0.wieght",
            "unknown parameter of sparse_l2; its parameters are weight, decouple",
        ),
        (
            {"variants": [{"regularizers": [{"type": "sparse_l3"}]}]},
            "variants.0.regularizers.0.type",
            "unknown regularizer type 'sparse_l3'",
        ),
        ({"variants": [{"regularizers": [{"weight": 1}]}]}, "variants.0.regularizers.0.type", "required"),
        (
            {"variants": [{"regularizers": [{"type": "sparse_l2", "weight": []}]}]},
            "variants.0.regularizers.0.weight",
            "empty grid",
        ),
        (
            {"variants": [{"regularizers": [{"type": "sparse_l2", "weight": [1e-4, "x"]}]}]},
            "variants.0.regularizers.0.weight",
            "grid values must be numbers",
        ),
        (
            {"variants": [{"regularizers": [{"type": "sparse_l2", "weight": [1e-4, 1e-4]}]}]},
            "variants.0.regularizers.0.weight",
            "repeated grid values",
        ),
        (
            {
                "variants": [
                    {"regularizers": [{"type": "sparse_l2", "weight": 1e-4, "decouple": [True, False]}]}
                ]
            },
            "variants.0.regularizers.0.decouple",
            "only allowed over numeric parameters",
        ),
        (
            {"variants": [{"regularizers": [{"type": "sparse_l2", "weight": [1e-4, 50]}]}]},
            "variants.0.regularizers.0.weight",
            "less than or equal to 10 (at sparse_l2 weight=50)",
        ),
        (
            {"variants": [{"regularizers": [{"type": "freeze", "from_pass": [1, 3]}]}], "passes": 3},
            "variants.0.regularizers.0.from_pass",
            "beyond training.num_passes",
        ),
        (
            {
                "variants": [
                    {"regularizers": [{"type": "sparse_l2", "weight": 1e-4}]},
                    {"regularizers": [{"type": "sparse_l2", "weight": 1e-3}]},
                ]
            },
            "variants.1.name",
            "used twice",
        ),
        (
            {
                "variants": [
                    {"regularizers": [{"type": "sparse_l2", "weight": [i * 1e-5 for i in range(1, 51)]}]}
                ],
                "seeds": 100,
            },
            "variants",
            f"at most {MAX_STUDY_RUNS}",
        ),
        ({"seeds": [1, 1]}, "seeds", "repeated seeds [1]"),
        ({"seeds": 0}, "seeds", "give a count"),
        ({"seeds": "three"}, "seeds", "give a count"),
        ({"passes": 0}, "passes", "greater than or equal to 1"),
        ({"base": {"model": {"hash_sise": 10}}}, "base.model.hash_sise", "Extra inputs"),
        ({"base": "quickstart.yaml"}, "base", "give the base job spec inline"),
        ({"varients": []}, "varients", "Extra inputs"),
        ({"labels": {"study": "x"}}, "labels", "set by the study itself"),
    ],
)
def test_bad_studies_name_the_field(study, field, words):
    with pytest.raises(SpecError) as e:
        parse_study(study)
    msg = str(e.value)
    assert msg.startswith(f"{field}:") and words in msg, msg


def test_study_files_resolve_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"training": {"num_passes": 4}}))
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump(
            {
                "base": "base.yaml",
                "base_overrides": {"data": {"synthetic": {"examples_per_day": 1000}}},
                "variants": [{"regularizers": [{"type": "dropout", "p": [0.1, 0.2]}]}],
                "seeds": 2,
            }
        )
    )
    exp = load_study(tmp_path / "s.yaml")
    assert exp.passes == 4 and exp.spec.base.data.synthetic.examples_per_day == 1000 and len(exp.runs) == 6


@pytest.mark.parametrize(
    ("name", "min_seeds"),
    [
        ("study.yaml", 3),
        ("study_movielens.yaml", 5),
        ("study_reset_min_count.yaml", 3),
        ("study_confirm.yaml", 5),
    ],
)
def test_example_studies_load(name, min_seeds):
    exp = load_study(REPO / "examples" / name)
    assert exp.arms[0].is_baseline and len(exp.seeds) >= min_seeds


def test_time_left_follows_the_rate_runs_finished_at():
    from trainer.study_spec import eta_seconds

    assert eta_seconds(120.0, 0, 10) is None  # nothing finished: no rate yet
    assert eta_seconds(0.0, 1, 10) is None
    assert eta_seconds(120.0, 4, 6) == 180.0  # 30 s a run so far, 6 to go
    assert eta_seconds(120.0, 4, 0) == 0.0
