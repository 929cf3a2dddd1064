"""The dashboard end to end: real API, real Redis, real trainer on Ray, headless chromium.

Run: ``.venv/bin/python -m pytest -q tests/dashboard`` (screenshots: artifacts/screenshots/).
"""

from __future__ import annotations

import copy
import json
import time

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.ray, pytest.mark.slow]

TINY_SPEC = {
    "data": {
        "synthetic": {"examples_per_day": 4000, "num_users": 500, "num_ads": 200},
        "batch_size": 256,
        "train_days": [0],
        "validation_days": [1],
        "test_days": [2],
    },
    "model": {"hash_size": 2000, "embedding_dim": 8, "dense_arch": [16, 8], "over_arch": [16]},
    "training": {"num_passes": 2},
    "metrics": {"window_size": 1024, "report_every_steps": 2},
}
# The job the browser follows live: long enough (a few seconds of steps per pass on two
# shared cores) that windows land while the page is watching, and the API can be
# restarted under it.
LIVE_SPEC = copy.deepcopy(TINY_SPEC)
LIVE_SPEC["data"]["synthetic"]["examples_per_day"] = 60000
LIVE_SPEC["training"]["num_passes"] = 3
REG_SPEC = copy.deepcopy(LIVE_SPEC)  # the same job plus a regularizer: a fair comparison
REG_SPEC["regularizers"] = [{"type": "sparse_l2", "weight": 0.001}]

JOB_TIMEOUT_S = 300
# Samples, every 100 ms from page load, of what the job page shows.
SAMPLER = """
window.__samples = [];
setInterval(() => {
  const c = document.querySelector('#chart-train-ne');
  const b = document.querySelector('#job-status .badge');
  const conn = document.querySelector('#conn-state');
  window.__samples.push({t: Date.now(), n: c ? +c.dataset.points : -1,
                         status: b ? b.dataset.status : null, conn: conn ? conn.className : null});
}, 100);
"""

_jobs: dict[str, str] = {}  # jobs later tests reuse: name -> id


def _wait_status(page, statuses, timeout_ms):
    page.wait_for_function(
        "(ss) => { const b = document.querySelector('#job-status .badge'); return b && ss.includes(b.dataset.status); }",
        arg=list(statuses),
        timeout=timeout_ms,
    )


@pytest.fixture(scope="module")
def reg_job(dashboard_api):
    """A second job (with a sparse L2 regularizer) submitted over REST, running alongside."""
    job = dashboard_api.submit(REG_SPEC, name="tiny-sparse-l2", labels={"sweep": "dashboard-test"})
    return job["id"]


def test_token_prompt_guards_every_page(new_page, dashboard_api, shot):
    page = new_page(token=False)
    page.goto("/")
    dialog = page.locator("#token-dialog")
    dialog.wait_for(state="visible")
    assert page.locator("#jobs-table").count() == 0  # nothing renders without a token
    page.fill("#token-input", "not-the-token")
    page.click("#token-submit")
    page.wait_for_function("document.querySelector('#token-error').textContent.includes('401')")
    assert dialog.is_visible()
    shot(page, "token_prompt")
    page.fill("#token-input", "dashboard-test-token")
    page.click("#token-submit")
    page.wait_for_selector("#jobs-table")
    assert not dialog.is_visible()
    assert page.evaluate("sessionStorage.getItem('rectrain.token')") == "dashboard-test-token"
    # a token the API stops accepting brings the prompt back (401 -> ask again)
    page.evaluate("sessionStorage.setItem('rectrain.token', 'revoked')")
    page.goto("/ui/compare")
    dialog.wait_for(state="visible")
    assert "401" in page.inner_text("#token-error")
    assert page.errors == []


def test_submit_form_shows_validation_errors_inline(new_page, shot):
    page = new_page()
    page.goto("/ui/submit")
    page.wait_for_selector("body[data-ready='1']")
    assert "data:" in page.input_value("#job-spec")  # prefilled with the example spec
    bad = "model:\n  embedding_dim: 6\n  no_such_field: 1\ntraining:\n  num_passes: 0\n"
    page.fill("#job-spec", bad)
    page.click("#submit-job")
    page.wait_for_selector("#err-spec li")
    text = page.inner_text("#err-spec")
    assert "model.embedding_dim" in text and "multiple of 4" in text, text
    assert "model.no_such_field" in text, text
    assert "training.num_passes" in text, text
    assert "(line 2)" in text and "(line 3)" in text, text  # pointed at the YAML lines
    assert page.url.endswith("/ui/submit")  # nothing was created
    shot(page, "submit_validation_error")
    # YAML that does not parse is caught before it is sent; a bad label under its field
    page.fill("#job-spec", "model: [unclosed")
    page.fill("#job-labels", "novalue")
    page.click("#submit-job")
    page.wait_for_selector("#err-spec li")
    assert "cannot parse" in page.inner_text("#err-spec")
    assert "key=value" in page.inner_text("#err-labels")
    assert page.errors == []


def test_job_page_streams_ne_live_and_shows_per_pass_table(new_page, dashboard_api, reg_job, shot):
    page = new_page()
    page.context.add_init_script(SAMPLER)
    page.goto("/ui/submit")
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#job-name", "tiny-baseline")
    page.fill("#job-labels", "sweep=dashboard-test")
    page.fill("#job-spec", json.dumps(LIVE_SPEC, indent=2))  # JSON is YAML too
    page.click("#submit-job")
    page.wait_for_url("**/ui/jobs/*")
    job_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    _jobs["baseline"] = job_id
    page.wait_for_selector("body[data-ready='1']")
    assert page.inner_text("#job-title") == "tiny-baseline"

    # NE points arrive while the job runs, without a reload
    page.evaluate("window.__noReload = true")
    page.wait_for_function(
        "+document.querySelector('#chart-train-ne').dataset.points > 0"
        " || ['failed', 'cancelled'].includes(document.querySelector('#job-status .badge').dataset.status)",
        timeout=JOB_TIMEOUT_S * 1000,
    )
    assert page.get_attribute("#job-status .badge", "data-status") not in ("failed", "cancelled"), (
        dashboard_api.job(job_id).get("error")
    )
    n0 = int(page.get_attribute("#chart-train-ne", "data-points"))
    page.wait_for_function(
        f"+document.querySelector('#chart-train-ne').dataset.points > {n0}", timeout=60_000
    )
    shot(page, "job_running")

    # the API goes away mid-run and comes back: the page reconnects and catches up by itself
    assert dashboard_api.job(job_id)["status"] == "running", "job too short to restart the API under it"
    before = page.evaluate("window.__samples.length")
    dashboard_api.restart()
    _wait_status(page, ["succeeded", "failed", "cancelled"], JOB_TIMEOUT_S * 1000)
    after_restart = page.evaluate(f"window.__samples.slice({before})")
    assert any("reconnecting" in (s["conn"] or "") for s in after_restart), "the page never saw the drop"
    status = page.get_attribute("#job-status .badge", "data-status")
    assert status == "succeeded", dashboard_api.job(job_id).get("error")
    assert page.evaluate("window.__noReload") is True

    samples = page.evaluate("window.__samples")
    running = [s for s in samples if s["status"] == "running" and s["n"] > 0]
    assert running, f"no sample saw points while running: {samples[-5:]}"
    assert running[-1]["n"] > running[0]["n"], "the NE chart did not gain points while the job ran"
    assert page.evaluate("window.rectrainDebug.stream.sseEvents") > 0  # delivered live, by SSE

    # per-pass table when it finishes: one row per pass, NE on a sensible scale
    page.wait_for_selector("#pass-table")
    rows = page.locator("#pass-table tbody tr")
    assert rows.count() == LIVE_SPEC["training"]["num_passes"]
    val_ne = [float(rows.nth(i).locator("td").nth(2).inner_text()) for i in range(rows.count())]
    test_ne = [float(rows.nth(i).locator("td").nth(3).inner_text()) for i in range(rows.count())]
    assert all(0.3 < v < 1.5 for v in test_ne + val_ne), (val_ne, test_ne)
    # the pass with the lowest validation NE is the selected one (★), and the header says so
    sel = min(range(len(val_ne)), key=val_ne.__getitem__)
    assert page.locator("#pass-table tbody tr.selected").count() == 1
    assert page.get_attribute("#pass-table tbody tr.selected", "data-pass") == str(sel)
    assert f"selected pass {sel + 1}" in page.inner_text("#job-meta")
    assert "Oracle NE" in page.inner_text("#oracle-ne")
    for chart in ("#chart-pass-ne", "#chart-strata", "#chart-calibration", "#chart-throughput"):
        assert int(page.get_attribute(chart, "data-points")) > 0, chart
    assert page.inner_text("#conn-state") == "finished"
    # the chart holds every window the trainer wrote (poll + SSE merged, no duplicates)
    stored = dashboard_api.http.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 1000}).json()["data"]
    windows = {
        (e["event"]["pass"], e["event"]["step"]) for e in stored if e["event"]["type"] == "train_window"
    }
    assert page.evaluate("window.rectrainDebug.model.windows.size") == len(windows)
    assert page.errors == []
    page.wait_for_timeout(300)
    shot(page, "job_finished")


def test_compare_page_shows_two_jobs(new_page, dashboard_api, reg_job, shot):
    base = _jobs.get("baseline") or dashboard_api.submit(TINY_SPEC, name="tiny-baseline")["id"]
    for jid in (base, reg_job):
        assert dashboard_api.wait_terminal(jid, JOB_TIMEOUT_S)["status"] == "succeeded"
    page = new_page()
    page.goto(f"/ui/compare?ids={base},{reg_job}&baseline={base}")
    page.wait_for_selector("#compare-table tbody tr")
    rows = page.locator("#compare-table tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).get_attribute("data-job-id") == base
    assert "baseline" in rows.nth(0).inner_text()
    assert "sparse_l2(weight=0.001)" in rows.nth(1).inner_text()
    assert rows.nth(1).locator("td").nth(4).inner_text().isdigit()  # the selected pass
    delta = rows.nth(1).locator("td").nth(6).inner_text()
    assert delta[0] in "+−±" and float(delta[1:]) >= 0, delta  # a number vs the baseline
    passes = sum(dashboard_api.job(j)["num_passes"] for j in (base, reg_job))
    assert int(page.get_attribute("#chart-compare", "data-points")) == passes
    legend = page.inner_text("#chart-compare .u-legend")
    assert "tiny-baseline" in legend and "tiny-sparse-l2" in legend
    shot(page, "compare")
    # switching the baseline recomputes the deltas
    page.select_option("#baseline-select", reg_job)
    page.wait_for_function(
        "document.querySelector('#compare-table tbody tr:nth-child(2)').innerText.includes('baseline')"
    )
    assert page.errors == []

    # the jobs page lists both, and comparing them is one click from there
    page.goto("/")
    page.wait_for_selector(f"#jobs-table tr[data-job-id='{base}']")
    for jid in (base, reg_job):
        assert page.get_attribute(f"#jobs-table tr[data-job-id='{jid}'] .badge", "data-status") == "succeeded"
    shot(page, "jobs")
    page.click("a[data-nav=compare]")  # with no ids: the two most recent finished jobs
    page.wait_for_selector("#compare-table tbody tr")
    assert page.locator("#compare-table tbody tr").count() == 2

    # the finished job page in the dark theme, for the screenshots
    dark = new_page(color_scheme="dark")
    dark.goto(f"/ui/jobs/{base}")
    dark.wait_for_selector("#pass-table")
    dark.wait_for_timeout(300)
    shot(dark, "job_finished_dark")


def test_jobs_page_filters_and_cancels(new_page, dashboard_api, shot):
    spec = copy.deepcopy(TINY_SPEC)
    spec["training"]["num_passes"] = 50
    job = dashboard_api.submit(spec, name="to-cancel")
    # the job passes through queued/starting: filter on a status it stays in
    t0 = time.time()
    while dashboard_api.job(job["id"])["status"] != "running" and time.time() - t0 < 120:
        time.sleep(0.2)
    job = dashboard_api.job(job["id"])
    assert job["status"] == "running", job
    page = new_page()
    page.goto("/?status=" + job["status"])
    row = page.locator(f"#jobs-table tr[data-job-id='{job['id']}']")
    row.wait_for()
    assert page.input_value("#status-filter") == job["status"]
    button = row.locator("button[data-action=cancel]")
    button.click()
    assert button.inner_text() == "confirm cancel"  # two clicks: no accidental cancels
    button.click()
    page.select_option("#status-filter", "cancelled")
    page.wait_for_selector(
        f"#jobs-table tr[data-job-id='{job['id']}'][data-status='cancelled']", timeout=90_000
    )
    assert "status=cancelled" in page.url
    assert page.errors == []
    t0 = time.time()
    while dashboard_api.job(job["id"])["status"] != "cancelled" and time.time() - t0 < 60:
        time.sleep(0.5)
    assert dashboard_api.job(job["id"])["status"] == "cancelled"
