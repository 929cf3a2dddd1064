"""The job page's model actions, end to end (real API, trainer on Ray, chromium):
"Download model" fetches the file with the bearer header; "Continue on new days" opens
the submit form with the spec warm-started from the job and its days moved on."""

from __future__ import annotations

import pytest
import yaml

from tests.dashboard.test_dashboard_e2e import TINY_SPEC

pytestmark = [pytest.mark.browser, pytest.mark.ray, pytest.mark.slow]


def test_download_model_and_continue_on_new_days(new_page, dashboard_api, shot, tmp_path):
    from trainer.export import load_model

    spec = {**TINY_SPEC, "training": {"num_passes": 1}}
    job = dashboard_api.submit(spec, name="daily")
    assert dashboard_api.wait_terminal(job["id"], 300)["status"] == "succeeded"

    page = new_page()
    requests = []
    page.on("request", lambda r: requests.append((r.url, r.headers.get("authorization"))))
    page.goto(f"/ui/jobs/{job['id']}")
    page.wait_for_selector("#download-model")
    with page.expect_download(timeout=120_000) as dl:
        page.click("#download-model")
    path = tmp_path / dl.value.suggested_filename
    dl.value.save_as(path)
    assert path.name == f"rectrain-{job['id']}-pass0.pt"
    assert load_model(path).spec.model.hash_size == 2000
    model_reqs = [(u, a) for u, a in requests if u.endswith(f"/v1/jobs/{job['id']}/model")]
    assert model_reqs and all(a and a.startswith("Bearer ") and "token" not in u for u, a in model_reqs)
    shot(page, "job_model_actions")

    page.click("#continue-job")
    page.wait_for_url("**/ui/submit?*")
    page.wait_for_function("document.querySelector('#job-spec').value.includes('init_from')")
    cloned = yaml.safe_load(page.input_value("#job-spec"))
    assert cloned["training"]["init_from"] == {"job": job["id"], "reset_optimizer": False}
    assert cloned["data"]["train_days"] == [1] and cloned["data"]["test_days"] == [3]
    assert page.input_value("#job-name") == "daily-next"
    page.click("#submit-job")
    page.wait_for_url("**/ui/jobs/*")
    new_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    init = dashboard_api.job(new_id)["spec"]["training"]["init_from"]
    assert init["job"] == job["id"] and init["pass"] == 0 and init["checkpoint"]
    # the service's warm start runs through the real trainer on Ray
    assert dashboard_api.wait_terminal(new_id, 300)["status"] == "succeeded"
    events = dashboard_api.http.get(f"/v1/jobs/{new_id}/metrics", params={"limit": 1000}).json()
    assert any(e["event"].get("phase") == "warm_start" for e in events["data"]), events
    assert not page.errors, page.errors
