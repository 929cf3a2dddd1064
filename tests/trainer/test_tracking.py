"""TensorBoard event files and MLflow runs written by a real (in-process) training run,
read back with TensorBoard's own reader and MLflow's client on a local file store."""

from __future__ import annotations

import pytest

from tests.trainer.specs import tiny_spec_dict
from trainer.errors import SpecError
from trainer.loop import LocalSession, Trainer
from trainer.metrics.events import make_sink
from trainer.metrics.tracking import MlflowSink, flatten
from trainer.spec import parse_spec


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    # MLflow 3 keeps its file store only behind this switch (a database is its default)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def _train(tmp_path, metrics: dict):
    d = tiny_spec_dict(training={"num_passes": 2, "seed": 5})
    d["data"].update(train_days=[0], validation_days=[1], test_days=[2])
    d["metrics"].update(metrics)
    spec = parse_spec(d)
    run_dir = tmp_path / "run"
    sink = make_sink(run_dir, stdout=False, job_id="job-abc", spec=spec, job_store=str(tmp_path / "store"))
    try:
        passes = Trainer(spec, LocalSession(run_dir), run_dir, sink=sink).run()
    finally:
        sink.close()
    return spec, run_dir, passes


def test_a_run_writes_tensorboard_scalars_and_an_mlflow_run(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    parent = MlflowClient(mlflow_uri)
    exp_id = parent.create_experiment("studies")
    parent_id = parent.create_run(exp_id, run_name="study").info.run_id
    mlflow = {
        "tracking_uri": mlflow_uri,
        "experiment": "studies",
        "parent_run_id": parent_id,
        "tags": {"arm": "a"},
    }
    spec, run_dir, passes = _train(tmp_path, {"tensorboard": True, "mlflow": mlflow})

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/ne_window", "pass/train_ne", "pass/val_ne", "pass/test_ne", "pass/test_auc"} <= tags
    assert {"pass/test_ne_frequent", "pass/test_calibration", "pass/examples_per_s"} <= tags
    tb = [(e.step, e.value) for e in acc.Scalars("pass/test_ne")]
    assert tb == [(p["pass"] + 1, pytest.approx(p["test_ne"], rel=1e-6)) for p in passes]
    # and a copy in the job's storage, which outlives the run directory
    copied = EventAccumulator(str(tmp_path / "store" / "tensorboard"))
    copied.Reload()
    assert [e.value for e in copied.Scalars("pass/test_ne")] == [e.value for e in acc.Scalars("pass/test_ne")]

    c = MlflowClient(mlflow_uri)
    (run,) = c.search_runs([exp_id], filter_string="tags.`rectrain.run` = 'job-abc'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent_id and run.data.tags["arm"] == "a"
    assert run.data.params["model.embedding_dim"] == "8"
    assert run.data.params["training.num_passes"] == "2"
    hist = c.get_metric_history(run.info.run_id, "test_ne")
    assert [(m.step, m.value) for m in hist] == [(p["pass"] + 1, pytest.approx(p["test_ne"])) for p in passes]
    sel = min(passes, key=lambda p: (p["val_ne"], p["pass"]))["pass"] + 1
    assert run.data.tags["rectrain.selected_pass"] == str(sel)


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, mlflow_uri):
    first = MlflowSink(mlflow_uri, experiment="e", run_key="job-1", spec={"a": 1})
    first.close()  # killed without a final event
    again = MlflowSink(mlflow_uri, experiment="e", run_key="job-1", spec={"a": 1})
    assert again.run_id == first.run_id
    other = MlflowSink(mlflow_uri, experiment="e", run_key="job-2")
    assert other.run_id != first.run_id


def test_flatten_names_nested_fields_and_list_items():
    assert flatten({"model": {"dim": 8}, "regs": [{"type": "l2", "w": 0.1}], "x": [], "n": None}) == {
        "model.dim": "8",
        "regs.0.type": "l2",
        "regs.0.w": "0.1",
        "x": "[]",
        "n": "None",
    }


def test_tracking_is_off_unless_asked_and_a_bad_mlflow_spec_is_refused(tmp_path):
    spec = parse_spec(tiny_spec_dict())
    assert spec.metrics.tensorboard is None and spec.metrics.mlflow is None
    d = tiny_spec_dict()
    d["metrics"]["mlflow"] = {"experiment": "x"}
    with pytest.raises(SpecError, match="metrics.mlflow.tracking_uri"):
        parse_spec(d)
