"""Studies a hostile or careless tenant submits: a grid far past the run limit is refused
from its sizes (nothing expanded, the API answering meanwhile); a study whose runs cannot
be submitted is refused at submit, or fails with the reason, never waits forever."""

from __future__ import annotations

import threading
import time

import httpx
from test_api_model import trained_run  # noqa: F401 (module fixture)
from test_api_studies import FAST, api, cl, stop, study, study_settings, wait_study  # noqa: F401 (fixtures)


def test_a_125k_arm_grid_is_refused_from_its_sizes_while_healthz_answers(api):  # noqa: F811
    grid = [round(1e-6 * (i + 1), 9) for i in range(50)]
    huge = study(
        seeds=1,
        variants=[
            {
                "regularizers": [
                    {"type": "sparse_l2", "weight": grid},
                    {"type": "max_norm", "c": [1.0 + i for i in range(50)]},
                    {"type": "dense_l2", "weight": grid},
                ]
            }
        ],
    )
    c = cl(api)
    worst = [0.0]
    stop = threading.Event()

    def ping() -> None:  # /healthz all along: its slowest answer
        with httpx.Client(base_url=api.url, timeout=30) as h:
            while not stop.is_set():
                t = time.perf_counter()
                assert h.get("/healthz").status_code == 200
                worst[0] = max(worst[0], time.perf_counter() - t)
                time.sleep(0.01)

    pinger = threading.Thread(target=ping)
    pinger.start()
    try:
        for route in ("/v1/studies/plan", "/v1/studies"):
            t0 = time.perf_counter()
            r = c.post(route, json={"spec": huge})
            took = time.perf_counter() - t0
            assert r.status_code == 422, r.text
            (d,) = r.json()["detail"]
            assert d["loc"] == ["body", "spec", "variants"]
            assert "125001 arms (baseline included) x 1 seeds = 125001 runs" in d["msg"]
            # a correctness bound (nothing is expanded: expanding took 23-26 s), not a benchmark
            assert took < 1.0, took
    finally:
        stop.set()
        pinger.join()
    assert worst[0] < 1.0, worst[0]
    assert c.get("/v1/studies").json()["count"] == 0


def test_a_study_that_cannot_submit_its_runs_is_refused_or_fails(study_settings, trained_run):  # noqa: F811
    """init_from.job of another tenant's job: 422 at submit naming the field, nothing
    left behind. A study whose runs stop being submittable later (its source job deleted
    while submission waits on a full queue) ends failed with the reason."""
    from api_helpers import BOB, ThreadServer
    from test_api_model import _finished_job

    from api.main import create_app

    s = study_settings.model_copy(update={"capacity_cpus": 1.0, "max_queued_per_owner": 1})
    srv = ThreadServer(create_app(s)).start()
    try:
        alice, bob = cl(srv), cl(srv, BOB)
        source = _finished_job(alice, s, trained_run)
        base = {**FAST, "training": {"init_from": {"job": source}}}
        # 4 runs (baseline + mn, 2 seeds) with one CPU and one queued job per owner: whether or
        # not the dispatcher starts the first run before the second is submitted, the third
        # cannot be queued (1 running + 1 queued), so submission pauses (2 runs could race)
        spec = study(base=base, seeds=2, variants=study()["variants"][1:], labels={"pass_delay": "0.3"})
        r = bob.post("/v1/studies", json={"spec": spec})
        assert r.status_code == 422, r.text
        (d,) = r.json()["detail"]
        assert d["loc"] == ["body", "spec", "base", "training", "init_from", "job"]
        assert d["msg"] == f"base.training.init_from.job: you have no job {source}"
        assert bob.get("/v1/studies").json()["count"] == 0 and bob.get("/v1/jobs").json()["count"] == 0

        r = alice.post("/v1/studies", json={"spec": spec})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert "submission paused" in (r.json()["waiting"] or "")
        assert alice.delete(f"/v1/jobs/{source}").status_code == 204
        done = wait_study(alice, sid, lambda x: x["status"] in ("succeeded", "failed", "cancelled"), 60)
        assert done["status"] == "failed", done
        assert done["error"] == f"training.init_from.job: you have no job {source}"
    finally:
        stop(srv)
