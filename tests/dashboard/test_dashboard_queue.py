"""The dashboard shows where a queued job stands: its position and why it waits, on the
jobs list and on the job page (real API on uvicorn, real Redis, runner processes with the
stand-in trainer, headless chromium)."""

from __future__ import annotations

import pytest
import redis

from tests.api.api_helpers import ThreadServer, client_for, wait_status
from tests.control_plane import control_plane_settings

pytestmark = [pytest.mark.browser]

TOKEN = "dashboard-queue-token"
SPEC = {"training": {"num_passes": 1}}


def test_jobs_and_job_pages_show_queue_position_and_reason(
    browser, redis_url, tmp_path, fake_trainer_path, shot
):
    from api.main import create_app

    url = redis_url.rsplit("/", 1)[0] + "/5"  # a database of its own: no other test's jobs
    redis.Redis.from_url(url).flushdb()
    s = control_plane_settings(
        url,
        tmp_path / "data",
        api_tokens=f"{TOKEN}:alice",
        capacity_cpus=1,
        capacity_gpus=0,
        capacity_memory_gb=8,
        reserve_memory_gb=0,
        dispatch_interval_s=0.2,
    )
    srv = ThreadServer(create_app(s)).start()
    http = client_for(srv.url, TOKEN)
    ctx = browser.new_context(base_url=srv.url, viewport={"width": 1400, "height": 900})
    ctx.add_init_script(f"sessionStorage.setItem('rectrain.token', {TOKEN!r})")
    try:
        hold = http.post("/v1/jobs", json={"spec": SPEC, "name": "holds-the-cpu", "labels": {"mode": "slow"}})
        wait_status(http, hold.json()["id"], lambda st: st == "running")
        waiting = http.post("/v1/jobs", json={"spec": SPEC, "name": "waits"}).json()["id"]
        expected = "#1 in queue · waiting for 1 CPU; 0 free"

        page = ctx.new_page()
        page.goto("/")
        cell = page.locator(f"#jobs-table tr[data-job-id='{waiting}'] .queue-info")
        page.wait_for_function(
            "([sel, want]) => { const e = document.querySelector(sel); return e && e.textContent === want; }",
            arg=[f"#jobs-table tr[data-job-id='{waiting}'] .queue-info", expected],
            timeout=30_000,
        )
        assert cell.inner_text() == expected
        shot(page, "jobs-queued")

        page.goto(f"/ui/jobs/{waiting}")
        page.locator("#job-queue").wait_for()
        assert page.locator("#job-queue").inner_text() == expected
        http.post(f"/v1/jobs/{hold.json()['id']}/cancel")
        # once it runs the page drops the queue line
        page.wait_for_selector("#job-status .badge[data-status='succeeded']", timeout=60_000)
        assert page.locator("#job-queue").count() == 0
    finally:
        ctx.close()
        http.close()
        srv.stop()
