"""Model lifecycle: warm start (training.init_from) across world sizes, export of one
unsharded model file, and predict with it matching the trainer's own test metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.trainer.specs import tiny_spec_dict
from trainer.errors import RectrainError
from trainer.loop import LocalSession, Trainer
from trainer.report import summarize_passes
from trainer.spec import parse_spec, spec_to_yaml


def _run(run_dir: Path, d: dict) -> list[dict]:
    """A job in this process, laid out like a run directory (spec.yaml, results.json)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = parse_spec(d)
    (run_dir / "spec.yaml").write_text(spec_to_yaml(spec))
    passes = Trainer(spec, LocalSession(run_dir), run_dir).run()
    (run_dir / "results.json").write_text(json.dumps({"passes": passes, **summarize_passes(passes)}))
    return passes


def test_export_then_predict_equals_the_trainers_test_metrics(tmp_path):
    from trainer.export import FORMAT, export_model, load_model
    from trainer.predict import predict

    d = tiny_spec_dict(data={"validation_days": [1], "test_days": [2]}, training={"num_passes": 1})
    passes = _run(tmp_path / "run", d)
    info = export_model(tmp_path / "run", tmp_path / "model.pt")  # default: the selected pass
    assert info["pass"] == 0 and info["selected_pass"] == 0 and info["format"] == FORMAT
    # self-describing, loadable without a process group by a plain torch.load
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["features"]["sparse"] == ["user_id", "ad_id", "ad_history", "ctx_0", "ctx_1", "ctx_2"]
    assert raw["hashing"]["hash_size"] == 2000 and raw["spec"]["model"]["embedding_dim"] == 8
    assert all(isinstance(v, torch.Tensor) for v in raw["state_dict"].values())
    assert load_model(tmp_path / "model.pt").pass_ == 0

    r = predict(tmp_path / "model.pt", "day:2", tmp_path / "p.parquet", batch_size=300, progress=False)
    want = passes[0]
    assert r["examples"] == 4000
    assert abs(r["ne"] - want["test_ne"]) < 1e-6
    assert abs(r["calibration"] - want["test_calibration"]) < 1e-6
    assert abs(r["auc"] - want["test_auc"]) < 1e-6
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "p.parquet")
    assert t.num_rows == 4000 and {"row", "day", "prediction", "label"} <= set(t.column_names)

    # the same days named by a data section (YAML): the same NE
    import yaml

    (tmp_path / "days.yaml").write_text(
        yaml.safe_dump({"data": {**d["data"], "validation_days": [], "test_days": [2]}})
    )
    r2 = predict(tmp_path / "model.pt", str(tmp_path / "days.yaml"), tmp_path / "p2.parquet", progress=False)
    assert r2["examples"] == 4000 and abs(r2["ne"] - r["ne"]) < 1e-9
    with pytest.raises(
        RectrainError, match=r"trained on synthetic data; score days of its generator with day:N"
    ):
        predict(tmp_path / "model.pt", str(tmp_path / "x.parquet"), tmp_path / "p3.parquet", progress=False)

    with pytest.raises(RectrainError, match=r"pass 3 .* is not kept"):
        export_model(tmp_path / "run", tmp_path / "m3.pt", pass_=3)


def test_predict_a_table_file_with_and_without_labels(tmp_path):
    import numpy as np
    import pandas as pd

    from trainer.export import export_model
    from trainer.predict import predict

    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame(
        {
            "user": rng.integers(0, 50, n),
            "item": rng.integers(0, 30, n),
            "x": rng.normal(size=n),
            "click": rng.integers(0, 2, n),
            "day": np.repeat([0, 1], n // 2),
        }
    )
    df.to_parquet(tmp_path / "t.parquet")
    cols = {"label": "click", "day": "day", "sparse": ["user", "item"], "dense": ["x"]}
    d = tiny_spec_dict(
        model={"dense_arch": [8]},
        data={"source": "table", "path": str(tmp_path / "t.parquet"), "columns": cols, "synthetic": None},
        training={"num_passes": 1},
    )
    d["data"].pop("synthetic")
    _run(tmp_path / "run", d)
    export_model(tmp_path / "run", tmp_path / "model.pt")
    r = predict(tmp_path / "model.pt", str(tmp_path / "t.parquet"), tmp_path / "p.parquet", progress=False)
    assert r["examples"] == n and r["ne"] is not None
    df.drop(columns=["click", "day"]).to_csv(tmp_path / "u.csv", index=False)
    r = predict(tmp_path / "model.pt", str(tmp_path / "u.csv"), tmp_path / "q.parquet", progress=False)
    assert r["examples"] == n and r["ne"] is None


def test_warm_start_from_two_workers_on_one(tmp_path):
    """Saved at 2 workers, warm-started at 1: the same weights and optimizer state at the
    start (or fresh optimizer state with reset_optimizer), progress counters at zero."""
    from tests.trainer.reshard_worker import DirSession, assemble, shards
    from tests.trainer.test_checkpoint import _assert_same, _spawn_world

    d = tiny_spec_dict(model={"num_replicas": 2}, scaling={"num_workers": 2})
    ckpt2 = tmp_path / "at2"
    saved = assemble(_spawn_world(2, d, 3, None, str(ckpt2), tmp_path / "dump2"))

    LocalSession(tmp_path)  # this process: a world of 1 on gloo
    warm = tiny_spec_dict(model={"num_replicas": 2}, training={"init_from": {"checkpoint": str(ckpt2)}})
    t = Trainer(parse_spec(warm), DirSession(0, 1, None, str(tmp_path / "out")), tmp_path)
    assert t._resume() == (0, 0) and t.global_step == 0 and t.passes == []
    _assert_same(assemble([shards(t)]), saved)
    assert t.dense_opt.state_dict()["state"]  # the dense optimizer's state came along

    warm["training"]["init_from"]["reset_optimizer"] = True
    t = Trainer(parse_spec(warm), DirSession(0, 1, None, str(tmp_path / "out")), tmp_path)
    t._resume()
    got, dense = assemble([shards(t)])
    for k, v in saved[0].items():
        if "momentum" in k:
            assert torch.count_nonzero(got[k]) == 0, k
        else:
            assert torch.equal(got[k], v), k
    assert all(torch.equal(dense[k], saved[1][k]) for k in saved[1])
    assert not t.dense_opt.state_dict()["state"]

    # another model: refused, naming what differs
    other = tiny_spec_dict(
        model={"num_replicas": 2, "hash_size": 3000}, training={"init_from": {"checkpoint": str(ckpt2)}}
    )
    with pytest.raises(
        RectrainError,
        match=r"training.init_from.checkpoint: .*model.hash_size: 2000 in the source, 3000 here",
    ):
        Trainer(parse_spec(other), DirSession(0, 1, None, str(tmp_path / "out")), tmp_path)._resume()


def test_warm_started_day_one_differs_from_scratch(tmp_path):
    """Train day 0; day 1 warm-started from it and day 1 from scratch both finish, with
    different results (the warm start really starts from day 0's model)."""
    day0 = tiny_spec_dict(data={"train_days": [0], "test_days": [2]}, training={"num_passes": 1})
    _run(tmp_path / "day0", day0)
    scratch = tiny_spec_dict(data={"train_days": [1], "test_days": [2]}, training={"num_passes": 1})
    warm = json.loads(json.dumps(scratch))
    warm["training"]["init_from"] = {"checkpoint": str(tmp_path / "day0"), "pass": 0}
    a = _run(tmp_path / "scratch", scratch)
    b = _run(tmp_path / "warm", warm)
    assert len(a) == len(b) == 1
    assert a[0]["test_ne"] != b[0]["test_ne"]
    assert a[0]["train_ne"] != b[0]["train_ne"]


def test_init_from_refusals(tmp_path):
    from trainer.lifecycle import resolve_checkpoint

    with pytest.raises(RectrainError, match=r"training.init_from.checkpoint: .* does not exist"):
        resolve_checkpoint(str(tmp_path / "nope"), None, "training.init_from.checkpoint")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RectrainError, match="holds no pass-end checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"), None, "training.init_from.checkpoint")
    spec = parse_spec(tiny_spec_dict(training={"init_from": {"job": "0123456789abcdef"}}))
    with pytest.raises(RectrainError, match=r"training.init_from.job: .*resolved .* by the service"):
        Trainer(spec, LocalSession(tmp_path), tmp_path / "r")._resume()


def test_export_and_warm_start_from_s3(s3_env, tmp_path):
    """A run kept on S3 (as a job's storage is on a cluster): its pass found, exported to
    S3 and read back, and a new job warm-started from it."""
    import pyarrow.fs as pafs

    from trainer import storage
    from trainer.export import export_model, load_model
    from trainer.lifecycle import pass_checkpoints

    d = tiny_spec_dict(training={"num_passes": 1})
    _run(tmp_path / "run", d)
    root = s3_env.make_bucket("lifecycle")
    fs, path = storage.resolve(f"{root}/runs/j1")
    pafs.copy_files(str(tmp_path / "run"), path, destination_filesystem=fs)
    run = f"{root}/runs/j1"
    assert list(pass_checkpoints(run)) == [0]
    info = export_model(run, f"{run}/models/pass_0.pt")
    assert info["pass"] == 0 and load_model(f"{run}/models/pass_0.pt").spec.model.hash_size == 2000

    warm = tiny_spec_dict(training={"num_passes": 1, "init_from": {"checkpoint": run}})
    t = Trainer(parse_spec(warm), LocalSession(tmp_path / "w"), tmp_path / "w")
    t._resume()
    from trainer.checkpoint import read_model_state

    want = read_model_state(tmp_path / "run" / "checkpoints" / "latest")
    got = {k: v for k, v in t.dmp.state_dict().items()}
    table = next(k for k in want if k.startswith("ebc."))
    shard = got[table].local_shards()[0].tensor
    assert torch.equal(shard, want[table])


def test_predict_a_criteo_file_equals_the_test_day(tmp_path):
    import numpy as np

    from trainer.export import export_model
    from trainer.predict import predict

    rng = np.random.default_rng(1)
    for day in (0, 1):
        lines = []
        for _ in range(1500):
            ints = ["" if rng.random() < 0.1 else str(int(rng.integers(0, 50))) for _ in range(13)]
            cats = [format(int(rng.integers(0, 40)), "08x") for _ in range(26)]
            lines.append("\t".join([str(int(rng.random() < 0.2)), *ints, *cats]))
        (tmp_path / f"day_{day}.tsv").write_text("\n".join(lines) + "\n")
    d = {
        "model": {"embedding_dim": 4, "hash_size": 200, "dense_arch": [8, 4], "over_arch": [8]},
        "data": {"source": "criteo", "path": str(tmp_path / "day_{day}.tsv"), "batch_size": 256},
        "training": {"num_passes": 1},
        "scaling": {"num_workers": 1},
        "metrics": {"window_size": 1024, "report_every_steps": 5},
    }
    passes = _run(tmp_path / "run", d)
    export_model(tmp_path / "run", tmp_path / "model.pt")
    r = predict(tmp_path / "model.pt", str(tmp_path / "day_1.tsv"), tmp_path / "p.parquet", progress=False)
    assert r["examples"] == 1500
    assert abs(r["ne"] - passes[0]["test_ne"]) < 1e-6 and abs(r["auc"] - passes[0]["test_auc"]) < 1e-6


def test_predict_with_a_min_count_model_maps_ids_as_training_did(tmp_path):
    """min_count: predict recounts the model's training days, so rare and unseen ids read
    the shared row as they did when the trainer scored its test day."""
    from trainer.export import export_model
    from trainer.predict import predict

    d = tiny_spec_dict(
        data={"test_days": [1]}, training={"num_passes": 1}, regularizers=[{"type": "min_count", "k": 3}]
    )
    passes = _run(tmp_path / "run", d)
    export_model(tmp_path / "run", tmp_path / "model.pt")
    r = predict(tmp_path / "model.pt", "day:1", tmp_path / "p.parquet", progress=False)
    assert abs(r["ne"] - passes[0]["test_ne"]) < 1e-6 and abs(r["auc"] - passes[0]["test_auc"]) < 1e-6
