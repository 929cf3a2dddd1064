"""Multi-node on one box: a Ray cluster of a head with 0 CPUs and two 1-CPU nodes
(``ray.cluster_utils.Cluster``), data and checkpoints on a real S3-compatible server on
loopback. The issue's "done means": a 2-worker job, one worker per node, reading Parquet
from S3 and checkpointing there, with dense dropout and SSE on, is killed mid-pass,
resumes (``max_failures: 1``) and finishes with the same per-pass NE as an
uninterrupted run of the same spec. And a head-local run directory is refused by us,
naming RECTRAIN_STORAGE_URI, before Ray's own storage check."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import trainer.storage as storage
from tests.ray_cluster import start_cluster
from tests.trainer.specs import REPO

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EXACT_FIELDS = (
    "train_ne",
    "train_calibration",
    "test_ne",
    "test_calibration",
    "test_auc",
    "test_ne_by_stratum",
)
ROWS_TRAIN, ROWS_TEST = 30_720, 4_000  # 60 steps of 2 x 256 per pass


def _clicks(day: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(day)
    user = rng.zipf(1.3, n) % 3000
    ad = rng.zipf(1.2, n) % 800
    ctx = rng.integers(0, 20, n)
    x = rng.normal(size=n).astype(np.float32)
    logit = -2.0 + 0.8 * np.sin(user * 0.7) + 0.8 * np.cos(ad * 1.3) + 0.3 * x
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pd.DataFrame({"label": label, "day": day, "user": user, "ad": ad, "ctx": ctx, "x": x})


def _put_parquet(uri: str, df: pd.DataFrame) -> None:
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, row_group_size=8192)
    storage.write_bytes(uri, buf.getvalue().to_pybytes())


def _spec(data_uri: str) -> dict:
    return {
        "model": {"embedding_dim": 8, "hash_size": 4000, "dense_arch": [16, 8], "over_arch": [16]},
        "data": {
            "source": "table",
            "path": data_uri + "/clicks/day={day}/*.parquet",
            "columns": {"label": "label", "day": "day", "sparse": ["user", "ad", "ctx"], "dense": ["x"]},
            "train_days": [0],
            "test_days": [1],
            "batch_size": 256,
        },
        "training": {"num_passes": 2, "checkpoint_every_steps": 20, "max_failures": 1, "seed": 3},
        "regularizers": [{"type": "dropout", "p": 0.2}, {"type": "sse_se", "p": 0.05}],
        "scaling": {"num_workers": 2},
        "metrics": {"window_size": 4096, "report_every_steps": 10},
    }


@pytest.fixture(scope="module")
def cluster(s3_server):
    # the nodes (and so the Ray Train workers) get S3 credentials from their environment
    c = start_cluster(head_cpus=0, cpus_per_node=1, num_nodes=2, env=s3_server.env)
    try:
        yield c
    finally:
        c.shutdown()


def _run(spec: dict, tmp: Path, name: str, env: dict) -> tuple[subprocess.Popen, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    run_dir = tmp / name
    cmd = [sys.executable, "-m", "trainer.cli", "run", str(tmp / "spec.yaml"), "--run-dir", str(run_dir)]
    cmd += ["--job-id", name, "--no-progress"]
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc, run_dir


def _registered(job_store: str) -> int:
    try:
        snap = storage.read_text(storage.join(job_store, "ray", "train", "checkpoint_manager_snapshot.json"))
        return len(json.loads(snap).get("checkpoint_results", []))
    except (storage.StorageError, json.JSONDecodeError):
        return 0


def test_killed_two_node_job_on_s3_resumes_exactly(cluster, s3_env, tmp_path):
    root = s3_env.make_bucket("multinode")
    _put_parquet(f"{root}/clicks/day=0/part-0.parquet", _clicks(0, ROWS_TRAIN // 2))
    _put_parquet(f"{root}/clicks/day=0/part-1.parquet", _clicks(10, ROWS_TRAIN // 2).assign(day=0))
    _put_parquet(f"{root}/clicks/day=1/part-0.parquet", _clicks(1, ROWS_TEST))
    spec = _spec(root)
    env = {
        **os.environ,
        **s3_env.env,
        **cluster.env(),
        "RECTRAIN_STORAGE_URI": f"{root}/store",
        "PYTHONUNBUFFERED": "1",
    }

    # uninterrupted
    proc, _ = _run(spec, tmp_path, "whole", env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    whole = json.loads(storage.read_text(f"{root}/store/runs/whole/results.json"))

    # killed mid-pass once a mid-pass checkpoint is registered in S3
    proc, run_dir = _run(spec, tmp_path, "killed", env)
    job_store = f"{root}/store/runs/killed"
    try:
        deadline, killed = time.time() + 240, None
        while time.time() < deadline and killed is None and proc.poll() is None:
            if _registered(job_store) >= 1:
                pid = int((run_dir / "pids" / "rank_1.pid").read_text())
                os.kill(pid, signal.SIGKILL)
                killed = pid
            time.sleep(0.05)
        assert killed, "the job ended before a worker could be killed"
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    resumed = json.loads(storage.read_text(f"{job_store}/results.json"))
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    resumes = [e["message"] for e in events if e.get("phase") == "resumed"]
    assert len(resumes) == 1 and "pass 1 step" in resumes[0] and "step 0" not in resumes[0], resumes

    # one worker on each node
    nodes = {(run_dir / "pids" / f"rank_{r}.node").read_text() for r in (0, 1)}
    assert len(nodes) == 2
    assert [p["pass"] for p in resumed["passes"]] == [0, 1]
    for a, b in zip(whole["passes"], resumed["passes"], strict=True):
        for f in EXACT_FIELDS:
            if isinstance(a[f], dict):
                for k in a[f]:
                    assert a[f][k] == pytest.approx(b[f][k], abs=1e-6, rel=0), (a["pass"], f, k)
            else:
                assert a[f] == pytest.approx(b[f], abs=1e-6, rel=0), (a["pass"], f, a[f], b[f])
        assert a["train_examples"] == b["train_examples"]


def test_a_head_local_run_directory_is_refused_naming_the_setting(cluster, tmp_path):
    spec = _spec("s3://unused")
    env = {**os.environ, **cluster.env(), "PYTHONUNBUFFERED": "1"}
    env.pop("RECTRAIN_STORAGE_URI", None)
    proc, _ = _run(spec, tmp_path, "local", env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-3000:]
    assert "RECTRAIN_STORAGE_URI" in out and "other node(s)" in out, out[-2000:]
