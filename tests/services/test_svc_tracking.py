"""Admission fills in the service's tracking defaults where a spec leaves them unset, and
nests a study's runs under one MLflow parent run (real Redis, MLflow's file store)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from services import keys
from services.settings import Settings
from services.study_record import StudyTracking
from services.tracking import apply_tracking_defaults
from tests.trainer.specs import tiny_spec_dict
from trainer.spec import parse_spec


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def _apply(redis_url, settings, spec, **kw):
    async def go():
        r = aioredis.Redis.from_url(redis_url)
        try:
            return await apply_tracking_defaults(StudyTracking(r), settings, spec, **kw)
        finally:
            await r.aclose()

    return asyncio.run(go())


def test_defaults_fill_only_what_the_spec_leaves_unset(redis_url, redis_client, tmp_path, mlflow_uri):
    s = Settings(
        data_dir=tmp_path, tensorboard=True, mlflow_tracking_uri=mlflow_uri, mlflow_experiment="team"
    )
    out = _apply(redis_url, s, parse_spec(tiny_spec_dict()), owner="alice", name="j", labels={})
    assert out.metrics.tensorboard is True
    assert out.metrics.mlflow.tracking_uri == mlflow_uri and out.metrics.mlflow.experiment == "team"
    assert out.metrics.mlflow.parent_run_id is None and out.metrics.mlflow.run_name == "j"
    own = tiny_spec_dict()
    own["metrics"].update(
        tensorboard=False, mlflow={"tracking_uri": "http://127.0.0.1:1", "experiment": "mine"}
    )
    kept = _apply(redis_url, s, parse_spec(own), owner="alice", name="j", labels={})
    assert kept.metrics.tensorboard is False and kept.metrics.mlflow.experiment == "mine"
    off = _apply(
        redis_url,
        Settings(data_dir=tmp_path),
        parse_spec(tiny_spec_dict()),
        owner="alice",
        name="j",
        labels={},
    )
    assert off.metrics.tensorboard is False and off.metrics.mlflow is None


def test_a_tenant_cannot_point_mlflow_at_a_file_store(redis_url, redis_client, tmp_path):
    from trainer.errors import SpecError

    d = tiny_spec_dict()
    d["metrics"]["mlflow"] = {"tracking_uri": (tmp_path / "anywhere").as_uri()}
    with pytest.raises(SpecError, match="metrics.mlflow.tracking_uri: the service logs only to http"):
        _apply(redis_url, Settings(data_dir=tmp_path), parse_spec(d), owner="a", name="j", labels={})
    assert not (tmp_path / "anywhere").exists()


def test_a_studys_runs_share_one_mlflow_parent(redis_url, redis_client, tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    study = "0123456789abcdef"
    redis_client.hset(keys.study_key(study), mapping={"name": "my study", "owner": "alice"})
    s = Settings(data_dir=tmp_path, mlflow_tracking_uri=mlflow_uri)
    spec = parse_spec(tiny_spec_dict())
    a = _apply(redis_url, s, spec, owner="alice", name="a", labels={"study": study, "study_arm": "baseline"})
    b = _apply(redis_url, s, spec, owner="alice", name="b", labels={"study": study, "study_arm": "sparse_l2"})
    assert a.metrics.mlflow.parent_run_id == b.metrics.mlflow.parent_run_id
    assert b.metrics.mlflow.tags == {"rectrain.study": study, "rectrain.arm": "sparse_l2"}
    parent = MlflowClient(mlflow_uri).get_run(a.metrics.mlflow.parent_run_id)
    assert parent.info.run_name == "my study" and parent.data.tags["rectrain.study"] == study
    # a job's labels are its submitter's to write: naming another owner's study nests nothing
    bob = _apply(redis_url, s, spec, owner="bob", name="x", labels={"study": study, "study_arm": "a"})
    assert bob.metrics.mlflow.parent_run_id is None and "rectrain.study" not in bob.metrics.mlflow.tags


def test_an_mlflow_default_without_the_package_would_be_refused_at_start(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_mlflow(name, *a, **kw):
        if name == "mlflow":
            raise ImportError("no mlflow")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(ValueError, match="pip install 'rectrain\\[mlflow\\]'"):
        Settings(data_dir=tmp_path, mlflow_tracking_uri="http://127.0.0.1:5000")
