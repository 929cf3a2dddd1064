"""The study pages in headless chromium against the real API and Redis, with the seeded
stand-in trainer (tests/services/fake_study_trainer.py) so that an 8-run study finishes in
seconds: the page fills in live over SSE and states the answer; the new-study form plans,
and shows the API's field errors. Screenshots: artifacts/screenshots/study_*.png."""

from __future__ import annotations

import os
import shutil

import pytest

from services.launch_env import pythonpath_with
from tests.dashboard.conftest import ARTIFACTS, OWNER, REPO, TOKEN, ApiServer

pytestmark = [pytest.mark.browser]

STUDY = {
    "name": "dashboard study",
    "base": {
        "data": {
            "synthetic": {"examples_per_day": 4000, "num_users": 500, "num_ads": 200},
            "batch_size": 256,
        },
        "model": {"hash_size": 2000, "embedding_dim": 8, "dense_arch": [16, 8], "over_arch": [16]},
        "metrics": {"window_size": 1024, "report_every_steps": 5},
    },
    "variants": [
        {"regularizers": [{"type": "sparse_l2", "weight": [1e-4, 1e-3]}]},
        {"regularizers": [{"type": "max_norm", "c": 1.0}]},
    ],
    "seeds": 2,
    "passes": 3,
    "labels": {"pass_delay": "0.7"},
}


@pytest.fixture(scope="module")
def study_api(redis_url):
    data_dir = ARTIFACTS / "dashboard-study-run"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        {
            "REDIS_URL": redis_url,
            "RECTRAIN_API_TOKENS": f"{TOKEN}:{OWNER}",
            "RECTRAIN_LAUNCHER": "local",
            "RECTRAIN_TRAINER_MODULE": "fake_study_trainer",
            "RECTRAIN_DATA_DIR": str(data_dir),
            "RECTRAIN_STUDY_POLL_S": "0.3",
            "RECTRAIN_CAPACITY_CPUS": "8",  # the stand-in trainer barely uses a CPU: run all 8 at once
            "PYTHONPATH": pythonpath_with(REPO, REPO / "tests" / "services", env=env),
        }
    )
    server = ApiServer(env, data_dir / "api.log")
    server.start()
    try:
        yield server
    finally:
        try:
            for s in server.http.get("/v1/studies").json()["data"]:
                server.http.post(f"/v1/studies/{s['id']}/cancel")
        except Exception:
            pass
        server.stop()
        server.http.close()


@pytest.fixture
def page(browser, study_api):
    ctx = browser.new_context(
        viewport={"width": 1400, "height": 1000}, base_url=study_api.base_url, color_scheme="light"
    )
    ctx.set_default_timeout(60_000)
    ctx.add_init_script(f"sessionStorage.setItem('rectrain.token', {TOKEN!r})")
    p = ctx.new_page()
    p.errors = []
    p.on("pageerror", lambda e: p.errors.append(str(e)))
    yield p
    ctx.close()


def test_study_page_fills_in_live_and_states_the_answer(page, study_api, shot):
    r = study_api.http.post("/v1/studies", json={"spec": STUDY})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    page.goto(f"/ui/studies/{sid}")
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#study-title").text_content() == "dashboard study"
    # live: SSE snapshots arrive while runs finish passes, then the stream ends
    page.wait_for_function("(+document.body.dataset.studyUpdates || 0) >= 2")
    page.wait_for_function("document.querySelector('#study-progress').textContent.includes('running')")
    shot(page, "study_running")
    page.wait_for_function(
        "() => { const b = document.querySelector('#study-status .badge'); return b && b.dataset.status === 'succeeded'; }",
        timeout=240_000,
    )
    assert page.locator("#conn-state").text_content() == "finished"
    assert "8 / 8 runs finished" in page.locator("#study-progress").text_content()
    # the headline first: every arm at its validation-selected pass vs the baseline at its own
    res = study_api.http.get(f"/v1/studies/{sid}").json()["results"]
    headline = page.locator("#study-headline").text_content()
    assert headline == res["headline"]["sentence"]
    assert headline.startswith(
        "Best at what you would ship: sparse_l2 at weight="
    )  # the stand-in: −0.004 at pass 1
    assert "(selects pass 1), Δ test NE -0.00" in headline and "Holm-adjusted p" in headline
    assert "made on validation NE" in page.locator("#choice-rule").text_content()
    assert "null" not in page.locator("#study-answer").text_content()
    assert page.locator("#headline-table tbody tr").count() == 4
    best = page.locator(f"#headline-table tr[data-arm='{res['headline']['best']}'] td")
    assert best.nth(0).text_content() == "1" and best.nth(1).text_content().endswith("★")
    assert best.nth(2).text_content() == "seed 0: 1, seed 1: 1"
    assert "better" in (best.nth(5).get_attribute("class") or "")  # Holm-adjusted p < 0.05
    assert (
        best.nth(11).text_content() == "1.000" and best.nth(12).text_content() == "0.750"
    )  # calibration, AUC
    assert page.locator("#study-power").text_content().startswith("Power: with 2 seeds and Holm over 3 arms")
    sentences = page.locator("#study-sentences li").all_text_contents()
    assert len(sentences) == 3 and sentences[1].startswith("After 2 passes: beats the baseline: ")
    assert "sparse_l2 weight=0.001 by 0.008" in sentences[1]  # the stand-in: −0.004 x 2 at pass 2
    # 2 seeds, 3 arms: at pass 3 the raw intervals exclude 0 but Holm's adjusted p does not pass
    assert sentences[2] == "After 3 passes: no variant beats the baseline (Holm-adjusted p < 0.05)."
    rows = page.locator("#study-table tbody tr")
    assert rows.count() == 4
    l2 = page.locator("#study-table tr[data-arm='v0.1'] td")
    assert l2.nth(2).text_content().startswith("−0.01") and l2.nth(3).text_content().startswith("[−")
    assert l2.nth(5).text_content() == "2 / 2" and float(l2.nth(4).text_content()) >= 0.05
    assert "better" not in (l2.nth(2).get_attribute("class") or "")
    assert "oracle test NE" in page.locator("#study-table-wrap").text_content()
    assert int(page.locator("#chart-study-delta").get_attribute("data-points")) == 3 * 3
    curve = page.locator(".strength-curve")
    assert curve.count() == 1 and int(curve.get_attribute("data-points")) == 2 * (3 + 2)
    page.click("#pass-tabs button[data-pass='2']")
    assert page.locator("#pass-tabs button[data-pass='2']").get_attribute("class") == "small"
    assert "better" in (
        page.locator("#study-table tr[data-arm='v0.1'] td").nth(2).get_attribute("class") or ""
    )
    assert page.locator("#runs-table tbody tr").count() == 8
    shot(page, "study")
    # the report: the page's Report button saves it; one self-contained page in the browser
    with page.expect_download() as dl:
        page.click("#export-report")
    assert dl.value.suggested_filename == f"study-{sid}.html"
    r = study_api.http.get(f"/v1/studies/{sid}/report.html")
    assert open(dl.value.path(), encoding="utf-8").read() == r.text
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    report = page.context.new_page()
    requests: list[str] = []
    report.on("request", lambda q: requests.append(q.url))
    report.on("pageerror", lambda e: page.errors.append(f"report: {e}"))
    report.set_content(r.text)
    report.wait_for_selector("body[data-ready='1']")
    assert requests == []
    assert report.locator("#headline").text_content() == headline
    assert report.locator("#headline-table tbody tr").count() == 4
    # baseline + the strength validation chose per variant (2), 3 passes each; Δ: 2 arms
    assert int(report.locator("#chart-ne").get_attribute("data-points")) == 3 * 3
    assert int(report.locator("#chart-delta").get_attribute("data-points")) == 2 * 3
    assert int(report.locator("#curve-0").get_attribute("data-points")) == 2 * 2  # Δ test and Δ val
    assert "oracle (true probabilities) 0.8500" in report.locator("#chart-ne .legend").text_content()
    assert report.locator("#chart-ne canvas").count() == 1
    shot(report, "study_report")
    report.close()
    # a run's job page links back to its study
    page.click("#runs-table tr[data-run='v0.1/s0'] a")
    page.wait_for_selector("#job-study")
    assert page.locator("#job-study").get_attribute("href").endswith(f"/ui/studies/{sid}")
    page.goto("/ui/studies")
    page.wait_for_selector(f"#studies-table tr[data-study-id='{sid}']")
    assert page.locator(f"#studies-table tr[data-study-id='{sid}'] td").nth(2).text_content() == "8 / 8"
    shot(page, "studies")
    assert page.errors == []


def test_new_study_form_plans_and_shows_field_errors(page, shot):
    page.goto("/ui/studies/new")
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function("document.querySelector('#study-spec').value.includes('variants')")
    page.click("#plan-study")
    page.wait_for_selector("#plan-summary")
    assert (
        "4 arms (baseline + 3) × 2 seeds = 8 runs of 3 passes" in page.locator("#plan-summary").text_content()
    )
    shot(page, "study_new_plan")
    text = page.locator("#study-spec").input_value().replace("weight: [1.0e-4, 1.0e-3]", "wieght: [1.0e-4]")
    page.fill("#study-spec", text)
    page.click("#submit-study")
    page.wait_for_selector("#err-study li")
    err = page.locator("#err-study").text_content()
    assert "variants.0.regularizers.0.wieght: unknown parameter of sparse_l2" in err
    shot(page, "study_new_error")
    assert page.errors == []
