"""The Python client (services/client.py) against a real API over loopback, real Redis
and real runner processes with the stand-in study trainer (seconds, no Ray): jobs and
studies submitted, listed, read, streamed, cancelled, exported and deleted; the
results typed as the trainer writes them; the API's errors as ApiError."""

from __future__ import annotations

import json

import httpx
import pytest
from api_helpers import ALICE, BOB, REPO, ThreadServer
from test_api_basics import TINY

from services.client import ApiError, ApiUnreachable, Client, Job, Study
from trainer.results import PassResult, RunSummary

SMALL_STUDY = {
    "name": "l2",
    "base": TINY,
    "variants": [{"regularizers": [{"type": "sparse_l2", "weight": [1e-3]}]}],
    "seeds": 2,
    "passes": 2,
}


@pytest.fixture
def api(settings):
    s = settings.model_copy(
        update={
            "trainer_module": "fake_study_trainer",
            "study_reconcile_interval_s": 0.3,
            "study_poll_s": 0.2,
        }
    )
    from api.main import create_app

    srv = ThreadServer(create_app(s)).start()
    clients: list[Client] = []

    def client(token: str = ALICE) -> Client:
        c = Client(srv.url, token, timeout=10)
        clients.append(c)
        return c

    yield srv, client
    for c in clients:  # closed before the server stops (keep-alive connections hold it up)
        c.close()
    srv.stop()


def test_importing_the_client_leaves_torch_out():
    from tests.heavy_imports import heavy_imports

    assert heavy_imports("services.client") == []


def test_a_job_submitted_streamed_and_read_back_typed(api):
    srv, client = api
    c = client()
    job = c.submit_job(TINY, name="tiny", labels={"team": "ads"}, priority=2)
    assert isinstance(job, Job) and job.status in ("queued", "starting", "running") and job.priority == 2
    events = list(c.job_events(job.id))
    types = [e.type for e in events]
    assert (
        types.count("pass") == 2 and events[-1].type == "status" and events[-1].data["status"] == "succeeded"
    )
    assert all(e.id for e in events)  # stream ids: a caller can resume after any of them
    done = c.get_job(job.id)
    assert done.status == "succeeded" and done.finished and done.labels == {"team": "ads"}
    s = done.summary
    assert isinstance(s, RunSummary) and all(isinstance(p, PassResult) for p in s.passes)
    assert [p.pass_ for p in s.passes] == [0, 1]
    # the stand-in trainer: val NE = test NE + 0.001, so validation selects the lower test NE
    best = min(s.passes, key=lambda p: p.val_ne or 0.0)
    assert s.selected_pass == best.pass_ and s.test_ne_at_selected == best.test_ne
    assert s.oracle_test_ne == 0.85 and s.passes[0].test_ne_by_stratum["rare"] > s.passes[0].test_ne
    assert c.job_results(job.id) == s
    # resuming after the first event gives the rest
    rest = list(c.job_events(job.id, after=events[0].id))
    assert [e.id for e in rest] == [e.id for e in events[1:]]
    page = c.list_jobs(status="succeeded")
    assert page.count == 1 and page.data[0].id == job.id
    assert c.list_jobs(status="queued").count == 0
    # a ticket URL opens the stream without the token (for EventSource-style readers)
    url = c.stream_url("jobs", job.id)
    assert ALICE not in url
    with httpx.stream("GET", url, timeout=10) as r:
        assert r.status_code == 200 and "event: end" in r.read().decode()
    c.delete_job(job.id)
    with pytest.raises(ApiError) as e:
        c.get_job(job.id)
    assert e.value.status == 404


def test_api_errors_carry_status_and_message(api, tmp_path):
    srv, client = api
    c = client()
    with pytest.raises(ApiError) as e:
        c.get_job("0123456789abcdef")
    assert (
        e.value.status == 404 and e.value.message == "Job not found" and str(e.value) == "404: Job not found"
    )
    with pytest.raises(ApiError) as e:
        c.submit_job({**TINY, "model": {"hash_size": 1}})
    assert e.value.status == 422 and e.value.message.startswith("invalid job:\n  model.")
    assert isinstance(e.value.detail, list)  # the API's detail as it came
    with pytest.raises(ApiError) as e:
        client("not-a-token").list_jobs()
    assert e.value.status == 401
    job = c.submit_job(TINY)
    c.wait_job(job.id, timeout_s=30, poll_s=0.2)
    with pytest.raises(ApiError) as e:
        c.cancel_job(job.id)  # finished: nothing to cancel
    assert e.value.status == 409
    with pytest.raises(ApiError) as e:
        client(BOB).get_job(job.id)  # another owner's job does not exist for bob
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:
        c.download_model(job.id, tmp_path / "model.pt")  # the stand-in trainer saves no model
    assert e.value.status == 404 and not (tmp_path / "model.pt").exists()
    dead = Client("http://127.0.0.1:9", "t", timeout=2)
    assert dead.health() is False
    with pytest.raises(ApiUnreachable) as u:
        dead.list_jobs()
    assert "cannot reach the API at http://127.0.0.1:9" in str(u.value)
    dead.close()


def test_a_running_job_is_cancelled(api):
    _, client = api
    c = client()
    job = c.submit_job(TINY, labels={"mode": "slow"})
    seen = []
    for ev in c.job_events(job.id):
        seen.append(ev.type)
        if ev.type == "train_window" and seen.count("train_window") == 1:
            assert c.cancel_job(job.id).cancel_requested
    assert c.get_job(job.id).status == "cancelled" and "train_window" in seen


def test_a_study_submitted_followed_and_exported(api, tmp_path):
    _, client = api
    c = client()
    plan = c.plan_study(SMALL_STUDY)
    assert plan["runs"] == 2 * 2 and plan["arms"] == 2
    s = c.submit_study(SMALL_STUDY, name="l2 study")
    assert isinstance(s, Study) and s.name == "l2 study" and s.progress["total"] == 4
    snaps = list(c.study_events(s.id))
    assert snaps and all(isinstance(x, Study) for x in snaps) and snaps[-1].finished
    done = c.get_study(s.id)
    assert done.status == "succeeded" and done.results and done.results.get("baseline")
    assert [x.id for x in c.list_studies().data] == [s.id]
    from services.study_stats import CSV_COLUMNS

    rows = c.study_csv(s.id).splitlines()
    assert rows[0] == ",".join(CSV_COLUMNS) and len(rows) > 2
    assert "<html" in c.study_report_html(s.id)
    files = c.export_study(s.id, tmp_path / "out")
    assert sorted(p.name for p in files.values()) == ["report.html", "study.csv", "study.json"]
    assert json.loads(files["json"].read_text())["id"] == s.id
    with pytest.raises(ApiError) as e:
        c.cancel_study(s.id)  # it has finished
    assert e.value.status == 409
    c.delete_study(s.id)
    with pytest.raises(ApiError) as e:
        c.get_study(s.id)
    assert e.value.status == 404


def test_the_readme_example_runs(api, tmp_path, monkeypatch, capsys):
    srv, _ = api
    readme = (REPO / "README.md").read_text()
    section = readme.split("### From Python / a notebook", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("http://127.0.0.1:8000", srv.url).replace("rectrain-dev-token", ALICE)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "pass 0 test NE" in out and "pass 1 test NE" in out and "succeeded 0 " in out
    # the stand-in trainer keeps no checkpoint: the download is refused, with the API's reason
    assert "404" in out or (tmp_path / "model.pt").exists()
