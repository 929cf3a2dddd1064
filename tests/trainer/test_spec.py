"""Job spec validation: good specs load, bad ones name the field and what to change."""

import json

import pytest

from tests.trainer.specs import REPO, tiny_spec_dict
from trainer.errors import CapacityError, SpecError
from trainer.spec import JobSpec, load_spec, parse_spec


def test_quickstart_loads_and_defaults_fill_in():
    spec = load_spec(REPO / "examples" / "quickstart.yaml")
    assert spec.training.num_passes == 3
    assert spec.scaling.num_workers == 2
    assert spec.data.sparse_feature_names()[:2] == ["user_id", "ad_id"]
    assert spec.regularizers == []


def test_json_and_yaml_give_the_same_spec(tmp_path):
    d = tiny_spec_dict()
    (tmp_path / "a.json").write_text(json.dumps(d))
    import yaml

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(d))
    assert load_spec(tmp_path / "a.json") == load_spec(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"model": {"embedding_dim": 0}}, "model.embedding_dim"),
        ({"model": {"hash_size": -5}}, "model.hash_size"),
        ({"model": {"emb_dim": 8}}, "model.emb_dim"),
        ({"bogus_section": {}}, "bogus_section"),
        ({"training": {"num_passes": 0}}, "training.num_passes"),
        ({"training": {"dense_optimizer": {"type": "lbfgs"}}}, "training.dense_optimizer.type"),
        ({"training": {"sparse_optimizer": {"lr": -1}}}, "training.sparse_optimizer.lr"),
        ({"data": {"shuffle": "sometimes"}}, "data.shuffle"),
        ({"data": {"source": "criteo"}}, "data.path"),
        ({"data": {"source": "table", "path": "x.csv"}}, "data.columns"),
        ({"data": {"train_days": [0], "test_days": [0]}}, "data.test_days"),
        ({"data": {"batch_size": 0}}, "data.batch_size"),
        ({"data": {"stratum_feature": "nope"}}, "data.stratum_feature"),
        ({"scaling": {"num_workers": 0}}, "scaling.num_workers"),
        ({"metrics": {"window_size": 10}}, "metrics.window_size"),
        ({"model": {"dense_arch": [8, 4], "embedding_dim": 8}}, "model.dense_arch"),
        ({"regularizers": [{"type": "no_such_reg"}]}, "regularizers.0"),
    ],
)
def test_bad_field_is_named(patch, field):
    d = tiny_spec_dict()
    for section, values in patch.items():
        if isinstance(values, dict) and isinstance(d.get(section), dict):
            d[section] = {**d[section], **values}
        else:
            d[section] = values
    with pytest.raises(SpecError) as e:
        parse_spec(d)
    assert field in str(e.value), str(e.value)


def test_capacity_refusal_names_the_knobs():
    d = tiny_spec_dict()
    d["model"]["hash_size"] = 50_000_000
    d["scaling"] = {"memory_per_worker_gb": 4}
    with pytest.raises(CapacityError) as e:
        parse_spec(d)
    msg = str(e.value)
    assert "GiB per worker" in msg and "model.hash_size" in msg and "scaling.num_workers" in msg
    # the same spec fits when spread over enough workers
    d["scaling"] = {"memory_per_worker_gb": 4, "num_workers": 16}
    d["metrics"]["window_size"] = 16 * d["data"]["batch_size"]
    spec = parse_spec(d)
    assert spec.embedding_bytes_per_worker() < 4 * 1024**3


def test_memory_estimate_counts_tables_rows_dim_and_accumulator():
    spec = JobSpec.model_validate(tiny_spec_dict())
    rows, dim = spec.model.hash_size, spec.model.embedding_dim
    assert spec.table_bytes() == rows * dim * 4 + rows * 4
    assert spec.embedding_bytes_per_worker() == spec.num_tables() * spec.table_bytes()


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(tmp_path / "list.yaml")
