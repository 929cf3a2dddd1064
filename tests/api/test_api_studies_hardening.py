"""Studies a hostile or careless tenant submits: a grid far past the run limit is refused
from its sizes (nothing expanded, the API answering meanwhile)."""

from __future__ import annotations

import threading
import time

import httpx
from test_api_studies import api, cl, study, study_settings  # noqa: F401 (fixtures)


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
