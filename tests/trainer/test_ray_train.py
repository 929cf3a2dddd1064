"""Real Ray Train runs on the session Ray cluster: 2 workers, sharded tables, NE per pass,
the overfitting phenomenon at quickstart capacity, and resume after a killed worker."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from services.launch_env import pythonpath_with
from tests.trainer.specs import REPO, tiny_spec_dict
from trainer.launch import run_job
from trainer.spec import load_spec

pytestmark = pytest.mark.ray

PASS_FIELDS = (
    "train_ne",
    "val_ne",
    "val_calibration",
    "val_auc",
    "val_ne_by_stratum",
    "test_ne",
    "test_calibration",
    "test_auc",
    "test_ne_by_stratum",
    "oracle_val_ne",
    "oracle_test_ne",
    "examples_per_s",
)


def _events(run_dir: Path) -> list[dict]:
    p = run_dir / "events.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


@pytest.fixture(scope="module")
def quickstart(ray_session, tmp_path_factory):
    """The README's quickstart job itself: 2 workers, 3 passes over day 0, validation on
    day 1, test on day 2."""
    run_dir = tmp_path_factory.mktemp("quickstart")
    spec = load_spec(REPO / "examples" / "quickstart.yaml")
    assert spec.scaling.num_workers == 2
    result = run_job(spec, run_dir=run_dir, progress=False)
    return spec, run_dir, result


def test_two_worker_run_reports_every_metric_per_pass(quickstart):
    spec, run_dir, result = quickstart
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk == result.model_dump(mode="json")
    assert [p.pass_ for p in result.passes] == list(range(spec.training.num_passes))
    for p in result.passes:
        for f in PASS_FIELDS:
            assert getattr(p, f) is not None, f
        assert set(p.test_ne_by_stratum) == {"frequent", "medium", "rare"}
        assert all(v is not None and 0 < v < 2 for v in p.test_ne_by_stratum.values())
        assert p.test_ne is not None and 0 < p.test_ne < 1.5  # finite
        assert p.test_auc is not None and p.val_auc is not None
        assert 0.5 < p.test_auc < 1.0 and 0.5 < p.val_auc < 1.0
        assert p.examples_per_s is not None and p.examples_per_s > 0
        assert p.cpu_seconds and p.cpu_seconds > 0 and p.cpu_seconds_per_example
        # the oracle (true click probabilities) is the floor: no pass gets below it
        assert p.oracle_test_ne < p.test_ne and p.oracle_val_ne < p.val_ne
    # the reference predictors, from every row (rank 0 reads the data again at 2 workers)
    refs = result.references
    assert refs is not None
    assert "error" not in refs and refs["rows"] == {"train": 100_000, "validation": 100_000, "test": 100_000}
    assert (
        refs["logistic"]["test_ne"] < refs["constant"]["test_ne"]
        and result.pass1_worse_than_constant is False
    )
    # the pass with the lowest validation NE is selected; its test NE is the headline
    sel = min(result.passes, key=lambda p: p.val_ne or 0.0)
    assert result.selection == "validation" and result.selected_pass == sel.pass_
    assert result.test_ne_at_selected == sel.test_ne < 1.0  # the model learns
    assert result.oracle_test_ne == result.passes[0].oracle_test_ne
    events = _events(run_dir)
    kinds = {e["type"] for e in events}
    assert {"lifecycle", "train_window", "pass"} <= kinds
    steps = [e["step"] for e in events if e["type"] == "train_window"]
    assert steps == sorted(steps) and len(steps) >= 3
    assert events[-1]["phase"] == "finished"


def test_tables_are_sharded_across_both_workers(quickstart):
    _, run_dir, _ = quickstart
    ckpts = sorted(p for p in (run_dir / "ray" / "train").glob("checkpoint_*") if p.is_dir())
    assert ckpts, "no Ray Train checkpoint written"
    from trainer.checkpoint import shard_owners

    owners = shard_owners(ckpts[-1])
    owned = [{k for k, ranks in owners.items() if k.startswith("ebc.") and r in ranks} for r in (0, 1)]
    assert owned[0] and owned[1], "each rank should own some embedding shards"


def test_multi_pass_training_overfits_at_quickstart_capacity(quickstart):
    """The seeds' phenomenon: more passes over day 0 make validation (day 1) and test
    (day 2) NE worse after the first pass or two, while train NE keeps falling; the
    validation day selects an early pass."""
    _, _, result = quickstart
    test_ne = [p.test_ne for p in result.passes]
    val_ne = [p.val_ne for p in result.passes]
    train_ne = [p.train_ne for p in result.passes]
    assert result.selected_pass is not None and result.selected_pass <= 1, val_ne
    assert test_ne[-1] > result.test_ne_at_selected + 0.01, test_ne
    assert val_ne[-1] > val_ne[result.selected_pass] + 0.01, val_ne
    assert train_ne[-1] < train_ne[0], train_ne


def _registered_checkpoints(run_dir: Path) -> int:
    snap = run_dir / "ray" / "train" / "checkpoint_manager_snapshot.json"
    try:
        return len(json.loads(snap.read_text()).get("checkpoint_results", []))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _cli_env(ray_address: str) -> dict:
    return dict(os.environ, RAY_ADDRESS=ray_address, PYTHONUNBUFFERED="1")


def _start_run(spec: dict, tmp_path: Path, ray_address: str) -> tuple[subprocess.Popen, Path]:
    """``rectrain run`` on the session cluster as a subprocess (stdout+stderr piped)."""
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "trainer.cli",
        "run",
        str(spec_path),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, env=_cli_env(ray_address), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc, run_dir


def test_the_selected_and_the_last_pass_stay_exportable(quickstart, tmp_path):
    """Ray Train keeps the latest checkpoint and the best pass ends by validation NE: the
    selected pass (usually not the last, since the quickstart overfits) can be exported,
    with the trainer's metrics of that pass."""
    from trainer.export import export_model
    from trainer.lifecycle import pass_checkpoints

    _, run_dir, result = quickstart
    kept = pass_checkpoints(result.storage)
    sel, last = result.selected_pass, result.last_pass
    assert sel in kept and last in kept and len(kept) <= 3, (sel, last, kept)
    info = export_model(result.storage, tmp_path / "model.pt")
    assert info["pass"] == sel and info["metrics"]["test_ne"] == result.passes[sel].test_ne


_OMP_DRIVER = """
import json, sys
import ray
from trainer.launch import run_job
from trainer.spec import parse_spec
# the job's workers start with OMP_NUM_THREADS=1 (as a cluster or image that sets it for
# everything would give them): Ray then leaves it alone, so torch would run 1 thread
ray.init(address=sys.argv[1], runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}, log_to_driver=False)
run_job(parse_spec(json.loads(sys.argv[2])), run_dir=sys.argv[3], progress=False)
"""


def test_worker_threads_match_its_cpus_and_the_pass_reports_cpu_seconds(ray_address, tmp_path):
    """A Ray Train worker runs torch with as many intra-op threads as the CPUs it
    reserves (scaling.cpus_per_worker), also where its environment says otherwise; it
    reports them in run_dir/pids/rank_N.json with its RSS before the Trainer was built,
    and each pass reports its training CPU time."""
    d = tiny_spec_dict(training={"num_passes": 1}, scaling={"num_workers": 1, "cpus_per_worker": 2})
    d["data"]["synthetic"]["examples_per_day"] = 1024
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", _OMP_DRIVER, ray_address, json.dumps(d), str(run_dir)],
        env=_cli_env(ray_address),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads((run_dir / "pids" / "rank_0.json").read_text())
    assert info["omp_num_threads"] == "1" and info["torch_threads_at_start"] == 1, info
    assert info["torch_threads"] == 2, info
    assert info["rss_before_trainer_bytes"] > 50 * 2**20, info  # python + torch at least
    p = json.loads((run_dir / "results.json").read_text())["passes"][0]
    assert p["cpu_seconds"] > 0 and p["cpu_seconds_per_example"] == pytest.approx(
        p["cpu_seconds"] / p["train_examples"]
    )


def test_resume_after_a_killed_worker(ray_address, tmp_path):
    """SIGKILL rank 1 after the first pass's checkpoint: Ray Train restarts the worker group from
    the last checkpoint and the job still finishes every pass exactly once."""
    d = tiny_spec_dict()
    d["data"]["synthetic"]["examples_per_day"] = 40_000
    d["data"]["batch_size"] = 512
    d["training"] = {"num_passes": 4, "max_failures": 1}
    d["scaling"] = {"num_workers": 2}
    d["metrics"] = {"window_size": 4096, "report_every_steps": 10}
    proc, run_dir = _start_run(d, tmp_path, ray_address)
    try:
        deadline = time.time() + 240
        killed = None
        while time.time() < deadline and killed is None:
            # kill once Ray Train's controller has registered the first pass's checkpoint
            if _registered_checkpoints(run_dir) >= 1:
                pid = int((run_dir / "pids" / "rank_1.pid").read_text())
                os.kill(pid, signal.SIGKILL)
                killed = pid
            elif proc.poll() is not None:
                break
            time.sleep(0.1)
        assert killed, "the job ended before a worker could be killed"
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    result = json.loads((run_dir / "results.json").read_text())
    assert [p["pass"] for p in result["passes"]] == [0, 1, 2, 3]
    phases = [e.get("phase") for e in _events(run_dir) if e["type"] == "lifecycle"]
    assert "resumed" in phases
    assert int((run_dir / "pids" / "rank_1.pid").read_text()) != killed  # a new worker process
    assert "no validation data, no pass selected: last pass 4 test NE" in out


def test_cli_prints_the_table_and_rejects_bad_specs(ray_address, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_spec_dict(model={"embedding_dim": -3})))
    r = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "run", str(bad)],
        env=_cli_env(ray_address),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "model.embedding_dim" in r.stderr


def test_sigterm_cancels_the_run(ray_address, tmp_path):
    d = tiny_spec_dict(training={"num_passes": 50})
    proc, run_dir = _start_run(d, tmp_path, ray_address)
    deadline = time.time() + 120
    while time.time() < deadline and not any(e["type"] == "train_window" for e in _events(run_dir)):
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out[-2000:]
    assert not (run_dir / "results.json").exists()


def test_piped_output_is_plain_lines_and_a_relative_data_path_is_read_from_the_drivers_directory(
    ray_address, tmp_path
):
    """``rectrain run`` on a pipe (as in ``make demo > log`` or CI) asks for nothing and
    still gets no progress bar: whole lines only, no carriage returns, one per event.

    The same run (one cold job serves both checks) is started from a directory of its own
    with a relative ``data.path`` (as examples/movielens.yaml has): Ray Train workers run in
    directories of their own, yet the file is read under the directory the run was started
    from, and the recorded spec says where that was."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 4000  # 2000 training rows: 8 steps of 256, so a periodic step line is printed
    (tmp_path / "data").mkdir()
    pd.DataFrame(
        {
            "user": rng.integers(0, 50, n),
            "item": rng.integers(0, 30, n),
            "click": rng.integers(0, 2, n),
            "day": np.repeat([0, 1], n // 2),
        }
    ).to_csv(tmp_path / "data" / "t.csv", index=False)
    cols = {"label": "click", "day": "day", "sparse": ["user", "item"]}
    d = tiny_spec_dict(
        data={"source": "table", "path": "data/t.csv", "columns": cols, "train_days": [0], "test_days": [1]},
        training={"num_passes": 1},
    )
    d["data"].pop("synthetic")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(d))
    env = _cli_env(ray_address)
    env["PYTHONPATH"] = pythonpath_with(REPO, env=env)
    r = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "run", "spec.yaml", "--run-dir", str(tmp_path / "run")],
        env=env,
        cwd=tmp_path,  # the driver's directory: data/t.csv is under it, not under the repo
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "\r" not in r.stdout and "\r" not in r.stderr, (r.stdout[-1000:], r.stderr[-1000:])
    assert "step/s" not in r.stderr and "it/s" not in r.stderr  # no tqdm bar anywhere
    lines = r.stdout.splitlines()
    assert any(ln.startswith("[pass 1] train NE") for ln in lines), r.stdout
    assert any(ln.startswith("[pass 1] step") for ln in lines), r.stdout  # periodic step lines
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["passes"][0]["test_ne"] is not None
    recorded = yaml.safe_load((tmp_path / "run" / "spec.yaml").read_text())
    assert recorded["data"]["path"] == str(tmp_path / "data" / "t.csv")
