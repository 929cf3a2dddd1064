"""A tiny study end to end on real Ray: the real API and runners, the real trainer
(TorchRec + FBGEMM on Ray Train, CPU) for every run, 2 arms (baseline + sparse_l2) x
2 seeds x 2 passes on tiny synthetic data; its answer against the runs' own pass events."""

from __future__ import annotations

import pytest
from api_helpers import ALICE, ThreadServer, client_for, read_sse
from test_api_basics import TINY

from trainer.spec import DataSpec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Validation days (issue 10a): used when the job spec has them (the trainer then reports
# val_ne and the study the validation-selected pass); without them the study reports
# test NE and says that no validation-selected pass exists.
HAS_VALIDATION = "validation_days" in DataSpec.model_fields
BASE = {**TINY, "scaling": {"num_workers": 1}}
if HAS_VALIDATION:
    BASE["data"] = {**TINY["data"], "train_days": [0], "validation_days": [1], "test_days": [2]}
STUDY = {
    "name": "tiny ray study",
    "base": BASE,
    "variants": [{"regularizers": [{"type": "sparse_l2", "weight": 1e-3}]}],
    "seeds": 2,
    "passes": 2,
}


@pytest.fixture
def ray_api(settings, ray_address):
    from api.main import create_app

    s = settings.model_copy(
        update={
            "trainer_module": "trainer.cli",
            "ray_address": ray_address,
            "launcher": "local",
            "heartbeat_ttl_s": 5.0,
            "heartbeat_interval_s": 1.0,
            "study_poll_s": 0.5,
        }
    )
    srv = ThreadServer(create_app(s)).start()
    yield srv
    srv.stop()


def test_tiny_study_on_real_ray(ray_api):
    with client_for(ray_api.url, ALICE) as c:  # closed before the server stops
        _tiny_study(c)


def _tiny_study(c):
    r = c.post("/v1/studies", json={"spec": STUDY})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.json()["plan"]["runs"] == 4
    msgs = read_sse(c, f"/v1/studies/{sid}/events", timeout=400)
    assert msgs[-1]["event"] == "end", msgs[-3:]
    s = c.get(f"/v1/studies/{sid}").json()
    assert s["status"] == "succeeded", [(x["key"], x["status"], x["error"]) for x in s["runs"]]
    res = s["results"]
    # every number comes from the runs' pass events on the metrics stream
    for run in s["runs"]:
        events = c.get(f"/v1/jobs/{run['job_id']}/metrics", params={"limit": 1000}).json()["data"]
        ne = [e["event"]["test_ne"] for e in events if e["event"]["type"] == "pass"]
        assert run["test_ne"] == pytest.approx(ne) and len(ne) == 2
    runs = {x["key"]: x for x in s["runs"]}
    for k in (1, 2):
        row = next(a for a in res["per_pass"][k - 1]["arms"] if a["arm"] == "v0")
        d = row["delta_test_ne"]
        per_seed = [
            runs[f"v0/s{i}"]["test_ne"][k - 1] - runs[f"baseline/s{i}"]["test_ne"][k - 1] for i in (0, 1)
        ]
        assert d["n"] == 2 and d["per_seed"] == pytest.approx(per_seed)
        assert d["ci_low"] < d["mean"] < d["ci_high"]
        assert set(row["strata"]["test_ne"]) == {"frequent", "medium", "rare"}
        assert res["per_pass"][k - 1]["sentence"].startswith(f"After {k} pass")
    has_val = any(v is not None for x in s["runs"] for v in x["val_ne"])
    assert has_val == HAS_VALIDATION
    sel = next(a for a in res["selected"] if a["arm"] == "v0")
    if has_val:
        assert set(sel["selected_pass_per_seed"].values()) <= {1, 2}
        assert sel["delta_test_ne_at_selected"]["n"] == 2
    else:
        assert any("no validation NE" in n for n in res["notes"])
