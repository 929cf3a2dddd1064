"""Studies through the real API, real Redis and real runner processes, with a stand-in
trainer whose NE depends on seed and regularizers (tests/services/fake_study_trainer.py):
plan and validation, a whole study with its answer and exports, SSE progress, cancel,
delete, the per-owner limit, an API restart mid-study and a crash mid-submission."""

from __future__ import annotations

import csv
import html
import io
import re
import time

import pytest
from api_helpers import ALICE, BOB, ProcessServer, client_for, read_sse, settings_env

from services import keys

FAST = {
    "data": {"synthetic": {"examples_per_day": 4000, "num_users": 500, "num_ads": 200}, "batch_size": 256},
    "model": {"hash_size": 2000, "embedding_dim": 8, "dense_arch": [16, 8], "over_arch": [16]},
    "metrics": {"window_size": 1024, "report_every_steps": 5},
}


def study(**kw) -> dict:
    s = {
        "name": "l2 vs max_norm",
        "base": FAST,
        "variants": [
            {"regularizers": [{"type": "sparse_l2", "weight": [1e-4, 1e-3]}]},
            {"name": "mn", "regularizers": [{"type": "max_norm", "c": 1.0}]},
        ],
        "seeds": 3,
        "passes": 2,
    }
    s.update(kw)
    return s


@pytest.fixture
def study_settings(settings):
    return settings.model_copy(
        update={
            "trainer_module": "fake_study_trainer",
            "study_reconcile_interval_s": 0.3,
            "study_poll_s": 0.2,
        }
    )


@pytest.fixture
def api(study_settings):
    from api_helpers import ThreadServer

    from api.main import create_app

    s = ThreadServer(create_app(study_settings)).start()
    yield s
    stop(s)


def cl(srv, token: str = ALICE):
    """A client of ``srv`` that is closed before the server stops (an open keep-alive
    connection can hold up uvicorn's shutdown)."""
    c = client_for(srv.url, token)
    srv.__dict__.setdefault("clients", []).append(c)
    return c


def stop(srv) -> None:
    for c in srv.__dict__.get("clients", []):
        c.close()
    srv.stop()


def wait_study(c, sid, pred, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = c.get(f"/v1/studies/{sid}").json()
        if pred(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"study {sid} is {s['status']} after {timeout}s: {s['progress']}")
        time.sleep(0.2)


def test_plan_shows_size_and_cost_and_bad_specs_name_the_field(api):
    c = cl(api, ALICE)
    plan = c.post("/v1/studies/plan", json={"spec": study()}).json()
    assert plan["runs"] == 4 * 3 and plan["arms"] == 4 and plan["seeds"] == [0, 1, 2] and plan["passes"] == 2
    assert [a["label"] for a in plan["arm_list"]] == [
        "baseline",
        "sparse_l2 weight=0.0001",
        "sparse_l2 weight=0.001",
        "mn",
    ]
    assert plan["estimate"]["train_examples_total"] == 12 * 2 * 4000
    assert plan["estimate"]["sequential_seconds"] > 0
    bad = study(variants=[{"regularizers": [{"type": "sparse_l2", "wieght": [1e-4]}]}])
    r = c.post("/v1/studies", json={"spec": bad})
    assert r.status_code == 422
    (d,) = r.json()["detail"]
    assert d["loc"] == ["body", "spec", "variants", "0", "regularizers", "0", "wieght"]
    assert "unknown parameter of sparse_l2" in d["msg"]
    r = c.post("/v1/studies/plan", json={"spec": study(seeds=[1, 1])})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "spec", "seeds"]
    r = c.post("/v1/studies/plan", json={"spec": study(base={"model": {"hash_size": 1}})})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == [
        "body",
        "spec",
        "base",
        "model",
        "hash_size",
    ]
    assert c.get("/v1/jobs").json()["count"] == 0  # nothing was submitted


def test_a_study_runs_as_labelled_jobs_and_answers_with_intervals(api):
    c = cl(api, ALICE)
    created = c.post("/v1/studies", json={"spec": study()})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    # live progress over SSE until the end
    msgs = read_sse(c, f"/v1/studies/{sid}/events", timeout=90)
    snaps = [m["data"] for m in msgs if m.get("event") == "study"]
    assert msgs[-1]["event"] == "end" and msgs[-1]["data"] == {"status": "succeeded"}
    assert snaps[-1]["progress"]["succeeded"] == 12
    assert len(snaps) >= 2 and snaps[0]["progress"]["succeeded"] < 12  # it filled in live
    # time left at the rate runs finished: none before the first run ends or after the end
    assert all(x["eta_seconds"] is None for x in snaps if x["progress"]["finished"] == 0)
    assert all(x["eta_seconds"] > 0 for x in snaps if 0 < x["progress"]["finished"] < 12)
    assert snaps[-1]["eta_seconds"] is None

    s = c.get(f"/v1/studies/{sid}").json()
    assert s["status"] == "succeeded" and s["progress"]["passes_done"] == 24
    # every run is an ordinary job, labelled with the study
    jobs = c.get("/v1/jobs", params={"limit": 200}).json()["data"]
    assert len(jobs) == 12 and all(j["labels"]["study"] == sid for j in jobs)
    assert {j["spec"]["training"]["seed"] for j in jobs} == {0, 1, 2}
    assert {j["num_passes"] for j in jobs} == {2}

    res = s["results"]
    assert res["seeds"] == [0, 1, 2] and res["baseline"] == "baseline"
    p2 = {r["arm"]: r for r in res["per_pass"][1]["arms"]}
    l2 = p2["v0.1"]["delta_test_ne"]
    # fake trainer: sparse_l2 lowers NE by 0.004 x (pass+1) = 0.008 after 2 passes, plus noise
    assert l2["mean"] == pytest.approx(-0.008, abs=0.001)
    assert l2["n"] == 3 and l2["favouring"] == 3 and l2["excludes_zero"] and l2["ci_high"] < 0
    mn = p2["v1"]["delta_test_ne"]
    assert mn["mean"] == pytest.approx(0.0005, abs=0.001) and mn["ci_low"] < mn["mean"] < mn["ci_high"]
    assert p2["v0.1"]["strata"]["test_ne"]["rare"]["delta"]["mean"] == pytest.approx(l2["mean"], abs=1e-9)
    assert res["per_pass"][1]["oracle_test_ne"] == pytest.approx(0.85)
    sentence = res["per_pass"][1]["sentence"]
    assert (
        sentence.startswith("After 2 passes: beats the baseline: ")
        and re.search(r"sparse_l2 weight=0\.001 by 0\.00[78]\d NE", sentence)  # 0.008 +- the noise
    )
    # validation NE selects pass 1 for every run (NE rises at pass 2 without sparse_l2)
    sel = {r["arm"]: r for r in res["selected"]}
    assert sel["baseline"]["selected_pass_per_seed"] == {"0": 1, "1": 1, "2": 1}
    assert sel["v0.1"]["delta_test_ne_at_selected"]["mean"] == pytest.approx(-0.004, abs=0.001)
    # the headline: vs the baseline stopped at its own selected pass, chosen on validation
    h = res["headline"]
    assert set(h["ranking"][:2]) == {"v0.0", "v0.1"} and h["best"] in ("v0.0", "v0.1")
    assert h["sentence"].startswith("Best at what you would ship: sparse_l2 at weight=")
    assert "(selects pass 1), Δ test NE -0.00" in h["sentence"] and "Holm-adjusted p" in h["sentence"]
    assert sel["v0.1"]["delta_test_ne_at_selected"]["verdict"] == "beats" and h["power"]["arms"] == 3
    (curve,) = res["curves"]
    assert curve["param"] == "sparse_l2.weight" and [p["value"] for p in curve["points"]] == [1e-4, 1e-3]

    # exports
    rows = list(csv.DictReader(io.StringIO(c.get(f"/v1/studies/{sid}/export.csv").text)))
    assert len(rows) == 4 + 2 * 4  # the headline (at the selected pass) first, then per pass count
    assert [r["pass"] for r in rows[:4]] == ["selected"] * 4 and rows[0]["arm"] == "baseline"
    row = next(r for r in rows if r["pass"] == "2" and r["arm"] == "v0.1")
    assert float(row["delta_test_ne"]) == pytest.approx(l2["mean"])
    assert float(row["ci_high"]) == pytest.approx(l2["ci_high"]) and row["seeds_favouring"] == "3"
    # the report: one self-contained page (uPlot and the numbers inlined, nothing fetched)
    r = c.get(f"/v1/studies/{sid}/report.html")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert html.escape(h["sentence"]) in r.text and "id='headline-table'" in r.text
    assert "uPlot" in r.text and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text)
    assert cl(api, BOB).get(f"/v1/studies/{sid}/report.html").status_code == 404
    j = c.get(f"/v1/studies/{sid}/export.json").json()
    assert j["results"]["per_pass"][1]["arms"][2]["delta_test_ne"]["mean"] == pytest.approx(l2["mean"])
    # owners see only their own studies
    bob = cl(api, BOB)
    assert bob.get(f"/v1/studies/{sid}").status_code == 404 and bob.get("/v1/studies").json()["count"] == 0
    assert c.get("/v1/studies").json()["data"][0]["id"] == sid
    # delete removes the study and its jobs
    assert c.delete(f"/v1/studies/{sid}").status_code == 204
    assert c.get(f"/v1/studies/{sid}").status_code == 404 and c.get("/v1/jobs").json()["count"] == 0


def test_one_seed_gives_no_interval_and_says_so(api):
    c = cl(api, ALICE)
    sid = c.post("/v1/studies", json={"spec": study(seeds=1, variants=study()["variants"][:1])}).json()["id"]
    s = wait_study(c, sid, lambda s: s["status"] == "succeeded")
    d = s["results"]["per_pass"][0]["arms"][1]["delta_test_ne"]
    assert d["n"] == 1 and d["ci_low"] is None and d["ci_high"] is None and "one seed" in d["note"]
    assert "one seed" in s["results"]["per_pass"][0]["sentence"]
    assert any("one seed" in n for n in s["results"]["notes"])


def test_cancel_a_running_study_cancels_its_jobs(api):
    c = cl(api, ALICE)
    sid = c.post("/v1/studies", json={"spec": study(labels={"mode": "slow"}, seeds=2)}).json()["id"]
    wait_study(c, sid, lambda s: s["progress"]["running"] >= 1)
    r = c.delete(f"/v1/studies/{sid}")
    assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
    r = c.post(f"/v1/studies/{sid}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"]
    s = wait_study(c, sid, lambda s: s["status"] == "cancelled", timeout=60)
    assert s["progress"]["cancelled"] == s["progress"]["total"] == 8
    assert all(j["status"] == "cancelled" for j in c.get("/v1/jobs", params={"limit": 50}).json()["data"])
    assert c.post(f"/v1/studies/{sid}/cancel").status_code == 409
    assert c.delete(f"/v1/studies/{sid}").status_code == 204


def test_per_owner_limit_refuses_with_the_field(study_settings):
    from api_helpers import ThreadServer

    from api.main import create_app

    srv = ThreadServer(create_app(study_settings.model_copy(update={"study_max_runs": 10}))).start()
    try:
        c = cl(srv, ALICE)
        r = c.post("/v1/studies", json={"spec": study()})  # 12 runs
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "spec", "variants"]
        assert "per-owner limit of 10" in r.json()["detail"][0]["msg"]
        ok = c.post("/v1/studies", json={"spec": study(seeds=2, labels={"mode": "slow"})})  # 8 runs
        assert ok.status_code == 201
        r = c.post("/v1/studies", json={"spec": study(seeds=1)})  # 4 more: 12 > 10 while the first runs
        assert r.status_code == 422 and "unfinished runs" in r.json()["detail"][0]["msg"]
        c.post(f"/v1/studies/{ok.json()['id']}/cancel")
        wait_study(c, ok.json()["id"], lambda s: s["status"] == "cancelled")
    finally:
        stop(srv)


def test_study_streams_count_in_the_stream_caps(study_settings):
    """A study's event stream takes one of the owner's capped stream slots, as a job's
    does: with one slot per owner, a second stream (study or job) gets 429 until the
    first closes; another owner is not affected."""
    from api_helpers import ThreadServer

    from api.main import create_app

    srv = ThreadServer(create_app(study_settings.model_copy(update={"sse_max_streams_per_owner": 1}))).start()
    try:
        c = cl(srv, ALICE)
        sid = c.post("/v1/studies", json={"spec": study(seeds=1, labels={"mode": "slow"})}).json()["id"]
        job_id = c.get("/v1/jobs", params={"limit": 1}).json()["data"][0]["id"]
        with c.stream("GET", f"/v1/studies/{sid}/events", timeout=30) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # kept: dropping the iterator closes the stream
            assert next(lines) == "retry: 3000"  # open, and holding the owner's one slot
            for path in (f"/v1/studies/{sid}/events", f"/v1/jobs/{job_id}/events"):
                with c.stream("GET", path, timeout=30) as r:
                    assert r.status_code == 429 and r.headers["Retry-After"] == "5", (path, r.status_code)
                    assert "stream" in r.read().decode()
            bob = cl(srv, BOB)
            bob_sid = bob.post("/v1/studies", json={"spec": study(seeds=1, labels={"mode": "slow"})}).json()[
                "id"
            ]
            with bob.stream("GET", f"/v1/studies/{bob_sid}/events", timeout=30) as other:
                assert other.status_code == 200
            bob.post(f"/v1/studies/{bob_sid}/cancel")
        deadline = time.monotonic() + 30
        while True:  # the slot comes back once the server has seen the client go
            with c.stream("GET", f"/v1/studies/{sid}/events", timeout=30) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed study stream never gave its slot back"
            time.sleep(0.1)
        c.post(f"/v1/studies/{sid}/cancel")
        wait_study(c, sid, lambda s: s["status"] == "cancelled")
    finally:
        stop(srv)


def test_api_restart_mid_study_loses_nothing(study_settings, tmp_path):
    env = settings_env(study_settings)
    env["RECTRAIN_TRAINER_MODULE"] = "fake_study_trainer"
    env["RECTRAIN_STUDY_RECONCILE_INTERVAL_S"] = "0.3"
    api = ProcessServer(env).start(tmp_path / "api1.log")
    c = cl(api, ALICE)
    try:
        sid = c.post("/v1/studies", json={"spec": study(seeds=2, labels={"pass_delay": "1.5"})}).json()["id"]
        wait_study(c, sid, lambda s: s["progress"]["running"] >= 1)
        api.stop("kill")
        c.close()
        api = ProcessServer(env, port=api.port).start(tmp_path / "api2.log")
        c = cl(api, ALICE)
        assert c.get(f"/v1/studies/{sid}").json()["status"] in ("running", "succeeded")
        s = wait_study(c, sid, lambda s: s["status"] == "succeeded", timeout=90)
        assert s["progress"]["succeeded"] == 8 and len(s["runs"]) == 8
        assert c.get("/v1/jobs", params={"limit": 200}).json()["count"] == 8  # none twice
        assert s["results"]["per_pass"][1]["arms"][2]["delta_test_ne"]["n"] == 2
    finally:
        c.close()
        api.stop()


def test_runs_missing_after_a_crash_mid_submission_are_submitted(study_settings, redis_client):
    """The API died after recording the study and claiming one run, before any job: the
    reconciler of the next API process submits every run, the claimed one included."""
    import asyncio

    import redis.asyncio as aioredis

    from services.jobs import JobStore
    from services.studies import StudyStore
    from trainer.study_spec import parse_study

    async def crash():
        r = aioredis.Redis.from_url(study_settings.redis_url, decode_responses=True)
        try:
            st = StudyStore(JobStore(r))
            rec = await st.create("alice", parse_study(study(seeds=1)), None, 100)
            stale = time.time() - keys.STUDY_CLAIM_STALE_S - 1
            await r.hset(keys.study_runs_key(rec.id), "baseline/s0", f"claim:{stale}")
            return rec.id
        finally:
            await r.aclose()

    sid = asyncio.run(crash())
    from api_helpers import ThreadServer

    from api.main import create_app

    srv = ThreadServer(create_app(study_settings)).start()
    try:
        c = cl(srv, ALICE)
        s = wait_study(c, sid, lambda s: s["status"] == "succeeded")
        assert [r["status"] for r in s["runs"]] == ["succeeded"] * 4
        assert c.get("/v1/jobs").json()["count"] == 4
        # the next reconcile sweep settles it: final status recorded, out of the active set
        deadline = time.monotonic() + 10
        while redis_client.zscore(keys.active_studies_key(), sid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert redis_client.hget(keys.study_key(sid), "final_status") == "succeeded"
    finally:
        stop(srv)


def test_a_full_queue_pauses_submission_and_a_run_that_never_fits_is_refused(study_settings):
    """The job queue refuses jobs past the owner's queued limit: the study submits what
    fits, says it is waiting, and submits the rest as its jobs start; a study whose runs
    can never fit the cluster is refused whole (422 naming the field)."""
    from api_helpers import ThreadServer

    from api.main import create_app

    s = study_settings.model_copy(update={"capacity_cpus": 1.0, "max_queued_per_owner": 2})
    srv = ThreadServer(create_app(s)).start()
    try:
        c = cl(srv, ALICE)
        spec = study(seeds=2, variants=study()["variants"][1:], labels={"pass_delay": "0.3"})  # 4 runs
        r = c.post("/v1/studies", json={"spec": spec})
        assert r.status_code == 201, r.text
        first = r.json()
        assert first["progress"]["unsubmitted"] >= 1 and "submission paused" in first["waiting"]
        done = wait_study(c, first["id"], lambda s: s["status"] == "succeeded", timeout=90)
        assert done["progress"]["succeeded"] == 4 and done["waiting"] is None
        big = study(seeds=1, base={**FAST, "scaling": {"num_workers": 2}})
        r = c.post("/v1/studies", json={"spec": big})
        assert r.status_code == 422, r.text
        (d,) = r.json()["detail"]
        assert d["loc"] == ["body", "spec", "base", "scaling", "num_workers"] and "CPU" in d["msg"]
        assert c.get("/v1/studies").json()["count"] == 1  # the refused study left nothing behind
    finally:
        stop(srv)
