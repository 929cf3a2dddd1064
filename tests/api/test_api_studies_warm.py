"""Study runs through the service on warm worker groups (services/warm_backend.py
WarmBackend, trainer/warm.py), on real Ray with the real trainer, one CPU of capacity
so the runs queue: a group takes the study's next run while no other owner waits, each
run keeps its own job (status, events, results), a diverging arm fails alone and the
group goes on, another owner's job waits for at most one run of the study, and cancel
stops the study."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest
from api_helpers import ALICE, BOB, ThreadServer, client_for
from test_api_basics import TINY

from services.launcher import run_dir_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DATA = {
    **TINY["data"],
    "synthetic": {"examples_per_day": 4000, "num_users": 500, "num_ads": 200, "signal_scale": 50.0},
    "train_days": [0],
    "validation_days": [1],
    "test_days": [2],
}
BASE = {
    **TINY,
    "data": DATA,
    "training": {
        "num_passes": 2,
        "sparse_optimizer": {"lr": 1.0},
        "dense_optimizer": {"type": "sgd", "lr": 1.0},
    },
    "metrics": {"window_size": 1024, "report_every_steps": 2},
    "scaling": {"num_workers": 1},
}
STUDY = {
    "name": "warm study",
    "base": BASE,
    "variants": [
        {"regularizers": [{"type": "sparse_dropout", "p": 0.1}]},
        # lr x100 on both optimizers: diverges within a few steps (the trainer's NaN check)
        {"regularizers": [{"type": "lr_schedule", "sparse": [100], "dense": [100]}]},
    ],
    "seeds": 2,
    "passes": 2,
}


@pytest.fixture
def warm_api(settings, ray_address):
    from api.main import create_app

    s = settings.model_copy(
        update={
            "trainer_module": "trainer.cli",
            "ray_address": ray_address,
            "launcher": "local",
            "capacity_cpus": 1.0,  # one run at a time: the study's runs queue
            "heartbeat_ttl_s": 5.0,
            "heartbeat_interval_s": 1.0,
            "study_poll_s": 0.5,
        }
    )
    srv = ThreadServer(create_app(s)).start()
    yield srv, s
    srv.stop()


def _wait(c, settings, sid: str, cond, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = c.get(f"/v1/studies/{sid}").json()
        if cond(s):
            return s
        time.sleep(0.5)
    # what the unfinished runs' runners last said: where each one is stuck
    logs = []
    for run in s["runs"]:
        log = run_dir_for(settings, run["job_id"]) / "runner.log" if run.get("job_id") else None
        if run["status"] not in ("succeeded", "failed", "cancelled") and log and log.exists():
            logs.append(f"--- {run['key']} ({run['status']}) runner.log:\n" + log.read_text()[-3000:])
    raise AssertionError(
        f"study {sid}: condition not met in {timeout} s: {s['progress']}\n" + "\n".join(logs)
    )


def _t(v: str | None) -> float:
    return datetime.fromisoformat(v).timestamp() if v else float("inf")


def test_study_runs_on_warm_groups_fairly_and_cancel(warm_api):
    srv, settings = warm_api
    with client_for(srv.url, ALICE) as alice, client_for(srv.url, BOB) as bob:
        r = alice.post("/v1/studies", json={"spec": STUDY})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        # once the first run has finished, bob's job arrives while 5 runs still wait
        _wait(alice, settings, sid, lambda s: s["progress"]["finished"] >= 1, 300)
        bj = bob.post("/v1/jobs", json={"spec": {**TINY, "training": {"num_passes": 1}}})
        assert bj.status_code in (200, 201), bj.text
        bob_id = bj.json()["id"]
        s = _wait(alice, settings, sid, lambda s: s["status"] not in ("queued", "running"), 600)
        job = bob.get(f"/v1/jobs/{bob_id}").json()
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.5)
            job = bob.get(f"/v1/jobs/{bob_id}").json()
        assert job["status"] == "succeeded", job

        runs = {x["key"]: x for x in s["runs"]}
        for key, run in runs.items():
            if key.startswith("v1/"):  # the diverging arm fails alone
                assert run["status"] == "failed" and "diverged at step" in run["error"], run
            else:
                assert run["status"] == "succeeded", run
                events = alice.get(f"/v1/jobs/{run['job_id']}/metrics", params={"limit": 1000}).json()["data"]
                assert [e["event"]["test_ne"] for e in events if e["event"]["type"] == "pass"] == run[
                    "test_ne"
                ]
        # fairness: bob's job started after at most one more study run had started
        jobs = {k: alice.get(f"/v1/jobs/{x['job_id']}").json() for k, x in runs.items()}
        bob_created, bob_started = _t(job["created_at"]), _t(job["started_at"])
        overtook = [k for k, j in jobs.items() if bob_created < _t(j["started_at"]) < bob_started]
        assert len(overtook) <= 1, (overtook, job)
        # one group ran several runs in a row: a later run's results say so
        warm = [
            json.loads((run_dir_for(settings, j["id"]) / "results.json").read_text())["warm"]
            for j in jobs.values()
            if j["status"] == "succeeded"
        ]
        assert max(w["group_run"] for w in warm) >= 2, warm
        # the study's wall split: the succeeded runs' parts summed
        totals = s["wall_totals"]
        assert totals["runs"] == len(warm) and totals["training_s"] > 0 and totals["startup_s"] > 0

        # cancel: a second study stops; nothing of it is left running or queued
        r = alice.post("/v1/studies", json={"spec": {**STUDY, "variants": [], "seeds": 2}})
        sid2 = r.json()["id"]
        _wait(alice, settings, sid2, lambda s: s["progress"]["running"] + s["progress"]["finished"] >= 1, 300)
        assert alice.post(f"/v1/studies/{sid2}/cancel").status_code in (200, 202)
        s2 = _wait(
            alice,
            settings,
            sid2,
            lambda s: all(x["status"] in ("succeeded", "failed", "cancelled") for x in s["runs"]),
            120,
        )
        assert s2["status"] == "cancelled", s2["progress"]
        assert any(x["status"] == "cancelled" for x in s2["runs"]), s2["runs"]
