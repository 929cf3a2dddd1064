"""Warm execution (trainer/warm.py): runs on one long-lived worker group give the same
numbers, to the last bit, as each run trained alone by ``rectrain run`` (a fresh Ray
Train fit), in either order on the group; a diverging run fails alone and the group
goes on; each run's directory is written as ``rectrain run`` writes it."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.trainer.specs import tiny_spec_dict
from trainer.errors import RectrainError
from trainer.launch import run_job
from trainer.lifecycle import pass_checkpoints
from trainer.report import WALL_PARTS
from trainer.results import RESULTS_FILE, RunResult
from trainer.spec import parse_spec
from trainer.warm import Shape, WarmGroup

pytestmark = pytest.mark.ray

KEYS = (
    "train_ne",
    "train_calibration",
    "val_ne",
    "val_calibration",
    "val_auc",
    "val_ne_by_stratum",
    "test_ne",
    "test_calibration",
    "test_auc",
    "test_ne_by_stratum",
    "global_step",
)
DATA = {"train_days": [0], "validation_days": [1], "test_days": [2]}
# two arms with stochastic regularizers (sparse and dense draws), different seeds
ARM_A = {"regularizers": [{"type": "sparse_dropout", "p": 0.2}, {"type": "dropout", "p": 0.2}], "seed": 1}
ARM_B = {"regularizers": [{"type": "sse_se", "p": 0.1}], "seed": 2}


def _spec(arm: dict):
    synthetic = {"examples_per_day": arm.get("examples_per_day", 4000), "num_users": 500, "num_ads": 200}
    return parse_spec(
        tiny_spec_dict(
            data={**DATA, "synthetic": synthetic},
            training={"num_passes": 2, "seed": arm["seed"]},
            regularizers=arm["regularizers"],
        )
    )


def _diverging():
    # tests/hardening/test_divergence.py's case: sparse lr 100, SGD dense lr 100, strong signal
    synthetic = {"examples_per_day": 4000, "num_users": 500, "num_ads": 200, "signal_scale": 50.0}
    return parse_spec(
        tiny_spec_dict(
            data={**DATA, "synthetic": synthetic},
            training={
                "num_passes": 2,
                "sparse_optimizer": {"lr": 100.0},
                "dense_optimizer": {"type": "sgd", "lr": 100.0},
            },
            metrics={"window_size": 1024, "report_every_steps": 2},
        )
    )


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    """Each arm alone (the cold path: one Ray Train fit each), then on one warm group:
    A, B (after A), the diverging run, A again (after B and a failure)."""
    tmp = tmp_path_factory.mktemp("warm")
    a, b = _spec(ARM_A), _spec(ARM_B)
    cold = {
        "A": run_job(a, run_dir=tmp / "cold-a", progress=False),
        "B": run_job(b, run_dir=tmp / "cold-b", progress=False),
    }
    group = WarmGroup(Shape.of(a))
    try:
        warm = {"A1": group.run(a, tmp / "warm-a1"), "B": group.run(b, tmp / "warm-b")}
        pids = list(group.pids)
        with pytest.raises(RectrainError) as diverged:
            group.run(_diverging(), tmp / "warm-div")
        warm["A2"] = group.run(a, tmp / "warm-a2")
        assert group.pids == pids and group.restarts == 0  # the same processes all along
        rss_after = group.rss()
        # a longer run, undisturbed and then with its worker killed mid-run
        big = _spec({**ARM_A, "examples_per_day": 40000})
        warm["big"] = group.run(big, tmp / "warm-big")
        warm["big_killed"] = _run_killing_a_worker(group, big, tmp / "warm-big-killed")
        assert group.restarts == 1 and group.pids != pids
    finally:
        group.close()
    return {"cold": cold, "warm": warm, "diverged": diverged.value, "rss": rss_after, "tmp": tmp}


def _run_killing_a_worker(group, spec, run_dir):
    """``group.run(spec)`` while the worker is killed (SIGKILL by pid) once its first pass has begun."""
    victim = group.pids[0]

    def kill():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ev = run_dir / "events.jsonl"
            if ev.exists() and '"pass_started"' in ev.read_text():
                os.kill(victim, signal.SIGKILL)
                return
            time.sleep(0.05)

    t = threading.Thread(target=kill, daemon=True)
    t.start()
    out = group.run(spec, run_dir)
    t.join(5)
    return out


def _same_passes(warm: RunResult, cold: RunResult) -> None:
    assert len(warm.passes) == len(cold.passes) == 2
    for w, c in zip(warm.passes, cold.passes, strict=True):
        for k in KEYS:
            assert getattr(w, k) == getattr(c, k), (k, w.pass_, getattr(w, k), getattr(c, k))  # bit-identical


def test_warm_runs_equal_each_run_trained_alone_in_either_order(runs):
    cold, warm = runs["cold"], runs["warm"]
    assert cold["A"].passes[0].test_ne != cold["B"].passes[0].test_ne  # the arms differ
    _same_passes(warm["A1"], cold["A"])  # first on a fresh group
    _same_passes(warm["B"], cold["B"])  # after A
    _same_passes(warm["A2"], cold["A"])  # after B and a diverged run
    for w, c in (("A1", "A"), ("B", "B"), ("A2", "A")):
        assert warm[w].selected_pass == cold[c].selected_pass


def test_a_diverging_run_fails_alone(runs):
    msg = str(runs["diverged"])
    assert msg.startswith("training failed: diverged at step "), msg


def test_warm_run_directory_is_a_runs(runs):
    tmp, res = runs["tmp"], runs["warm"]["B"]
    run = tmp / "warm-b"
    assert RunResult.model_validate_json((run / RESULTS_FILE).read_text()) == res
    assert (run / "spec.yaml").exists() and (run / "pids" / "rank_0.pid").exists()
    phases = [e.get("phase") for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())]
    assert phases[0] == "started" and phases[-1] == "finished"
    assert sum(1 for line in (run / "events.jsonl").read_text().splitlines() if '"type": "pass"' in line) == 2
    # only the validation-selected pass's checkpoint is kept, where export finds it
    assert list(pass_checkpoints(str(run))) == [res.selected_pass]
    # the wall split: its parts add up to the run's wall; a run on a warm group built no data
    split = res.wall_split
    assert split is not None
    assert set(WALL_PARTS) <= set(split)
    assert split["wall_s"] == pytest.approx(sum(split[k] for k in WALL_PARTS))
    assert split["training_s"] > 0 and split["evaluation_s"] > 0
    assert runs["warm"]["A1"].wall_split["data_s"] > 0  # the first run on the group built it
    assert runs["warm"]["A2"].wall_split["data_s"] == 0  # later runs of the same data reuse it
    assert runs["cold"]["B"].wall_split["data_s"] > 0
    assert all(r > 0 for r in runs["rss"])


def _startup(run_dir) -> dict:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    (ev,) = [e for e in events if e.get("phase") == "startup"]
    return ev


def test_the_first_step_says_where_the_start_up_went(runs):
    cold = _startup(runs["tmp"] / "cold-b")  # rectrain run: from the driver process's start
    assert cold["startup_from"] == "process_start" and cold["step"] == 1
    assert {"ray_connected", "fit", "worker", "data", "model", "first_step"} <= set(cold["startup_s"])
    assert cold["startup_total_s"] == pytest.approx(sum(cold["startup_s"].values()))
    assert cold["message"].startswith("first step ") and "to the worker" in cold["message"]
    warm = _startup(runs["tmp"] / "warm-b")  # a warm run: from the driver's call
    assert warm["startup_from"] == "group_run" and "fit" not in warm["startup_s"]
    assert warm["startup_total_s"] < cold["startup_total_s"]


def test_a_run_whose_worker_dies_is_retried_from_its_start_with_the_same_numbers(runs):
    warm = runs["warm"]
    assert warm["big_killed"].warm.restarts == 1
    _same_passes(warm["big_killed"], warm["big"])


@pytest.fixture(scope="module")
def two_workers(ray_session, tmp_path_factory):
    """2 workers, tables sharded across both: arm A alone (cold), and on a warm group
    after arm B."""
    tmp = tmp_path_factory.mktemp("warm2")
    scaling = {"num_workers": 2, "cpus_per_worker": 1}
    a = _spec(ARM_A).model_copy(update={"scaling": _spec(ARM_A).scaling.model_copy(update=scaling)})
    b = _spec(ARM_B).model_copy(update={"scaling": _spec(ARM_B).scaling.model_copy(update=scaling)})
    cold = run_job(a, run_dir=tmp / "cold-a", progress=False)
    group = WarmGroup(Shape.of(a))
    try:
        group.run(b, tmp / "warm-b")
        warm = group.run(a, tmp / "warm-a")
    finally:
        group.close()
    return cold, warm, tmp


def test_two_worker_group_equals_the_cold_run_and_keeps_its_selected_checkpoint(two_workers):
    from trainer.checkpoint import read_model_state

    cold, warm, tmp = two_workers
    _same_passes(warm, cold)
    sel = warm.selected_pass
    (warm_ckpt,) = pass_checkpoints(str(tmp / "warm-a")).values()
    cold_ckpt = pass_checkpoints(str(tmp / "cold-a"))[sel]
    # the same files from both ranks, and the same weights as the cold run's checkpoint of that pass
    names = {p.name for p in Path(warm_ckpt).iterdir()}
    assert names == {p.name for p in Path(cold_ckpt).iterdir()}
    assert any(n.startswith("__1_") for n in names)  # rank 1's shards are there
    w, c = read_model_state(warm_ckpt), read_model_state(cold_ckpt)
    assert w.keys() == c.keys()
    for k in w:
        assert torch.equal(w[k], c[k]), k


# ---- cancel (services/warm_backend.py WarmBackend.stop sets the run's cancel flag)


def _pg_state(pg) -> str:
    from ray.util import placement_group_table

    return placement_group_table(pg)["state"]


def _run_in_thread(group, spec, run_dir, cancel) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def go():
        try:
            out["result"] = group.run(spec, run_dir, cancel=cancel)
        except Exception as e:
            out["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, out


def _until(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


def test_a_cancel_set_before_the_run_begins_is_not_lost(ray_session, tmp_path):
    # the service's runner may set it while this thread still joins Ray: nothing starts
    group = WarmGroup(Shape.of(_spec(ARM_A)))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RectrainError, match="^cancelled$"):
        group.run(_spec(ARM_A), tmp_path / "r", cancel=cancel)
    assert group.actors == [] and group._pg is None


def test_a_cancel_while_the_group_waits_for_resources_gives_them_back(ray_session, tmp_path):
    # more CPUs per worker than the cluster has: its placement group waits for ever
    spec = _spec(ARM_A)
    spec = spec.model_copy(update={"scaling": spec.scaling.model_copy(update={"cpus_per_worker": 200.0})})
    group, cancel = WarmGroup(Shape.of(spec)), threading.Event()
    t, out = _run_in_thread(group, spec, tmp_path / "r", cancel)
    _until(lambda: group._pg is not None)
    pg = group._pg
    time.sleep(1.0)
    assert t.is_alive() and _pg_state(pg) == "PENDING"
    cancel.set()
    t.join(10)
    assert not t.is_alive(), "the run did not end on cancel"
    assert str(out["error"]) == "cancelled" and group.actors == [] and group._pg is None
    _until(lambda: _pg_state(pg) == "REMOVED", 10)


def test_a_cancel_while_the_workers_start_ends_them(ray_session, tmp_path):
    import ray

    spec = _spec(ARM_A)
    group = WarmGroup(Shape.of(spec))
    t, out = _run_in_thread(group, spec, tmp_path / "r", None)
    _until(lambda: bool(group.actors))  # placed; the worker processes are starting
    actors, pg = list(group.actors), group._pg
    group.cancel()
    t.join(10)
    assert not t.is_alive(), "the run did not end on cancel"
    assert str(out["error"]) == "cancelled" and group.actors == [] and group._pg is None
    _until(lambda: _pg_state(pg) == "REMOVED", 10)
    for a in actors:  # killed, not left holding their CPUs
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(a.address.remote(), timeout=30)
