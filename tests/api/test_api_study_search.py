"""A staged study through the real API, Redis and runner processes, with the stand-in
trainer (tests/services/fake_study_trainer.py: a known sparse_l1 response curve, best at
weight 10^-3.3, and a sparse learning-rate term, best at 0.1): the baseline is tuned
first, a strength given as a range is searched in rounds on validation NE, and the
chosen strength is confirmed on the study's own seeds; the plan shows the budget, the
answer the tuned baseline, the searched curve and the confirmed result. Also the
stage-aware ``--local`` loop (services.study_cli.run_all) on the same curve."""

from __future__ import annotations

import html
import math

from api_helpers import ALICE
from test_api_studies import FAST, api, cl, stop, study_settings, wait_study  # noqa: F401 (fixtures)

from services.study_stats import format_table, to_markdown
from trainer.study_spec import parse_study

TUNE = {"grid": {"training.sparse_optimizer.lr": [0.04, 0.1]}, "passes": 1, "seeds": 1}


def staged(**kw) -> dict:
    s = {
        "name": "searched l1",
        "base": FAST,
        "variants": [
            {
                "regularizers": [{"type": "sparse_l1", "weight": {"log_range": [1e-6, 1e-1]}}],
                "search": {"points": 4, "rounds": 2, "seeds_per_round": 1},
            }
        ],
        "seeds": 2,
        "passes": 2,
        "tune_baseline": TUNE,
    }
    s.update(kw)
    return s


def test_a_searched_strength_with_a_tuned_baseline_through_the_service(api):  # noqa: F811
    c = cl(api, ALICE)
    plan = c.post("/v1/studies/plan", json={"spec": staged()}).json()
    st = plan["stages"]
    assert st["tune_baseline"]["runs"] == 2 and st["tune_baseline"]["seeds"] == [2]
    (srch,) = st["search"]
    assert srch["budget_runs"] == 10 and srch["max_runs_per_round"] == [4, 6] and srch["confirm_runs"] == 2
    assert (
        plan["runs"] == st["max_runs"] == 2 + 2 + 10 + 2 + 2
    )  # tune, baseline, search, confirm, search baseline
    bad = staged(variants=[{**staged()["variants"][0], "search": {"points": 4, "budget_runs": 3}}])
    r = c.post("/v1/studies/plan", json={"spec": bad})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == [
        "body",
        "spec",
        "variants",
        "0",
        "search",
        "budget_runs",
    ]

    created = c.post("/v1/studies", json={"spec": staged()})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    first = created.json()
    # only the tuning stage is submitted at first: every later run depends on its choice
    assert {r["stage"] for r in first["runs"]} == {"tune"} and first["progress"]["planned_max"] == plan[
        "runs"
    ]
    assert first["status"] in ("queued", "running") and first["plan"]["stages"] == st
    assert first["stages"]["stage"] == "tuning the baseline"
    from services.study_cli import _progress_line  # what `rectrain study --follow` prints

    assert _progress_line(first).endswith("; stage: tuning the baseline")
    s = wait_study(c, sid, lambda s: s["status"] not in ("queued", "running"), timeout=120)
    assert s["status"] == "succeeded", s["progress"]
    assert s["stages"]["done"] and s["progress"]["succeeded"] == len(s["runs"]) <= plan["runs"]

    res = s["results"]
    # the tuned baseline: over what, what was chosen (validation NE after 1 pass)
    tb = res["tuned_baseline"]
    assert tb["chosen"] == {"training.sparse_optimizer.lr": 0.1}
    assert (
        "The baseline was tuned first: training.sparse_optimizer.lr over [0.04, 0.1]"
        in res["stage_sentences"][0]
    )
    jobs = c.get("/v1/jobs", params={"limit": 200}).json()["data"]
    by_run = {j["labels"]["study_run"]: j for j in jobs}
    stage = {r["key"]: r["stage"] for r in s["runs"]}
    for key, j in by_run.items():
        lr = j["spec"]["training"]["sparse_optimizer"]["lr"]
        if stage[key] == "tune":
            assert j["num_passes"] == 1
        else:  # the baseline and every arm inherit the chosen value
            assert lr == 0.1 and j["num_passes"] == 2

    # the search: on validation, search seeds; the confirmation on the study's seeds
    (sr,) = res["search"]
    assert 1e-4 <= sr["chosen"] <= 3e-3, sr  # the curve's best is 10^-3.3 ~ 5e-4
    assert sr["runs_used"] <= sr["budget_runs"] == 10
    assert not set(sr["search_seeds"]) & {0, 1} and sr["confirmation_seeds"] == [0, 1]
    confirm = [r for r in s["runs"] if r["stage"] == "confirm"]
    assert {r["seed"] for r in confirm} == {0, 1} and {r["arm"] for r in confirm} == {sr["chosen_arm"]}
    conf = sr["confirmed"]["delta_test_ne_at_selected"]
    assert conf["n"] == 2 and "confirmed on seeds 0, 1, which the search did not use" in sr["sentence"]
    # the headline uses the confirmation seeds only: the searched arm is one row, seeds 0 and 1
    sel = {r["arm"]: r for r in res["selected"]}
    assert set(sel) == {"baseline", sr["chosen_arm"]} and res["seeds"] == [0, 1]
    assert sel[sr["chosen_arm"]]["label"].endswith("(searched)")
    # the curve: validation Δ vs strength (lowest near the optimum)
    pts = {p["value"]: p["val_delta_mean"] for p in sr["points"]}
    assert min(pts, key=lambda v: pts[v]) == sr["chosen"] and len(pts) >= 4

    # the answer in words, Markdown, CLI table and the report page
    md = to_markdown(res)
    assert "Searched curve of sparse_l1" in md and "(chosen)" in md and "tuned baseline" in md
    assert "searched curve of sparse_l1" in format_table(res)
    page = c.get(f"/v1/studies/{sid}/report.html").text
    assert "Strength search: sparse_l1" in page and "id='tuned-table'" in page
    assert html.escape(sr["sentence"]) in page and '"searched": true' in page
    assert c.delete(f"/v1/studies/{sid}").status_code == 204


def test_the_local_loop_runs_stage_by_stage_on_the_known_curve():
    """``rectrain study --local``'s loop (run_all) with the stand-in trainer's NE as the
    runner (its warm worker groups need Ray, which tests/api/test_api_study_cli.py covers)."""
    import importlib.util
    from pathlib import Path

    from services.study_cli import run_all

    path = Path(__file__).resolve().parents[1] / "services" / "fake_study_trainer.py"
    spec_ = importlib.util.spec_from_file_location("_fake_study_trainer_curve", path)
    assert spec_ is not None and spec_.loader is not None
    mod = importlib.util.module_from_spec(spec_)
    import sys

    sys.path.insert(0, str(path.parent))  # it imports its sibling fake_trainer
    try:
        spec_.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    fake_ne = mod.test_ne

    exp = parse_study(staged())
    order = []

    def run_one(run):
        order.append(run.stage)
        spec = exp.job_spec(run).model_dump(mode="json")
        regs = spec["regularizers"]
        out = []
        for p in range(spec["training"]["num_passes"]):
            ne = fake_ne(p, run.seed, regs, spec)
            out.append({"pass": p, "test_ne": ne, "val_ne": ne + 0.001})
        return out

    from services.study_cli import stage_lines

    plan_lines = stage_lines(exp.plan()["stages"])
    assert plan_lines[0] == "  staged: up to 18 runs (2 fixed runs on the study's seeds)"
    assert "budget 10 runs (at most [4, 6] by round)" in plan_lines[2]
    lines: list[str] = []
    finished, failed, st = run_all(exp, run_one, say=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert not failed and st is not None and st.done
    # stage by stage: tuning first, the confirmation last
    assert order[:2] == ["tune", "tune"] and order[-2:] == ["confirm", "confirm"]
    assert [ln for ln in lines if ln.startswith("--")][:2] == [
        "-- tuning the baseline: 2 runs",
        "-- search round 1: 7 runs",
    ]
    assert st.tuned["chosen"] == {"training.sparse_optimizer.lr": 0.1}
    (sr,) = st.search
    assert abs(math.log10(sr["chosen"]) + 3.3) < 0.6


def test_an_api_restart_mid_search_resumes_without_submitting_a_run_twice(study_settings, tmp_path):  # noqa: F811
    """Killed while round 1 runs: the next API process regenerates the same runs from the
    jobs' results (deterministic keys), submits round 2 and the confirmation, once each."""
    from api_helpers import ProcessServer, settings_env

    env = settings_env(study_settings)
    env["RECTRAIN_TRAINER_MODULE"] = "fake_study_trainer"
    env["RECTRAIN_STUDY_RECONCILE_INTERVAL_S"] = "0.3"
    spec = staged(tune_baseline=None, seeds=1, passes=2, labels={"pass_delay": "0.5"})
    spec["variants"][0]["search"] = {"points": 3, "rounds": 2, "seeds_per_round": 1}
    srv = ProcessServer(env).start(tmp_path / "api1.log")
    c = cl(srv, ALICE)
    try:
        sid = c.post("/v1/studies", json={"spec": spec}).json()["id"]
        wait_study(c, sid, lambda s: s["progress"]["running"] >= 1)
        srv.stop("kill")
        c.close()
        srv = ProcessServer(env, port=srv.port).start(tmp_path / "api2.log")
        c = cl(srv, ALICE)
        s = wait_study(c, sid, lambda s: s["status"] not in ("queued", "running"), timeout=120)
        assert s["status"] == "succeeded" and s["stages"]["done"], s["progress"]
        stages = [r["stage"] for r in s["runs"]]
        assert stages.count("confirm") == 1 and stages.count("search") > 4  # round 2 ran after the restart
        jobs = c.get("/v1/jobs", params={"limit": 200}).json()["data"]
        keys = [j["labels"]["study_run"] for j in jobs]
        assert len(keys) == len(set(keys)) == len(s["runs"])  # none twice
    finally:
        c.close()
        srv.stop()
