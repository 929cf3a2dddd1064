"""Job lifecycle over the API with the stand-in trainer: SSE, resume, polling, cancel, delete."""

from __future__ import annotations

import httpx
from api_helpers import ALICE, TERMINAL, client_for, read_sse, wait_status
from test_api_basics import TINY


def test_submit_stream_and_succeed(alice):
    r = alice.post("/v1/jobs", json={"spec": TINY, "name": "quick", "labels": {"team": "ads"}})
    assert r.status_code == 201
    job = r.json()
    assert job["status"] == "queued" and job["num_passes"] == 2 and job["passes_done"] == 0
    assert job["spec"]["model"]["hash_size"] == 2000 and job["spec"]["scaling"]["num_workers"] == 1
    assert job["created_at"].endswith("Z") or job["created_at"].endswith("+00:00")

    msgs = read_sse(alice, f"/v1/jobs/{job['id']}/events", until=lambda m: m.get("event") == "end")
    events = [m for m in msgs if "event" in m]
    kinds = [m["event"] for m in events]
    statuses = [m["data"]["status"] for m in events if m["event"] == "status"]
    assert statuses == ["queued", "starting", "running", "succeeded"]
    assert kinds[-1] == "end" and events[-1]["data"] == {"status": "succeeded"}
    assert kinds.count("pass") == 2 and "train_window" in kinds and "lifecycle" in kinds
    ids = [m["id"] for m in events if "id" in m]
    assert len(ids) == len(events) - 1 and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert all(m["data"]["type"] == m["event"] for m in events[:-1])

    done = alice.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["passes_done"] == 2 and done["error"] is None
    s = done["summary"]
    assert [p["pass"] for p in s["passes"]] == [0, 1]
    # the fake trainer's validation NE selects pass 0; pass 1 has the lower test NE
    assert s["selection"] == "validation" and s["selected_pass"] == 0
    assert s["test_ne_at_selected"] == s["passes"][0]["test_ne"] > s["passes"][1]["test_ne"]
    assert s["passes"][0]["val_ne"] == s["val_ne_at_selected"] and s["oracle_test_ne"] == 0.81
    assert s["passes"][0]["test_ne_by_stratum"] == {"frequent": 0.9, "medium": 0.93, "rare": 0.97}
    assert s["last_examples_per_s"] > 0
    assert done["started_at"] <= done["finished_at"]

    listed = alice.get("/v1/jobs", params={"status": "succeeded"}).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == job["id"]
    assert alice.get("/v1/jobs", params={"status": "running"}).json()["count"] == 0
    assert alice.get("/v1/jobs", params={"status": "bogus"}).status_code == 422


def test_sse_resumes_after_last_event_id_and_takes_stream_ticket(server, alice):
    job = alice.post("/v1/jobs", json={"spec": TINY}).json()
    wait_status(alice, job["id"], lambda s: s in TERMINAL)
    path = f"/v1/jobs/{job['id']}/events"
    full = [m for m in read_sse(alice, path) if "id" in m]
    assert full and all("data" in m for m in full)
    cut = full[len(full) // 2]["id"]
    rest = [m for m in read_sse(alice, path, headers={"Last-Event-ID": cut}) if "event" in m]
    assert [m["id"] for m in rest[:-1]] == [m["id"] for m in full[len(full) // 2 + 1 :]]
    assert rest[-1]["event"] == "end"
    # ?after= does the same; Last-Event-ID wins over it
    again = [m for m in read_sse(alice, path, params={"after": cut}) if "id" in m]
    assert [m["id"] for m in again] == [m["id"] for m in full[len(full) // 2 + 1 :]]
    # browsers' EventSource: a stream ticket in the query string (never the token)
    anon = client_for(server.url, None)
    assert anon.get(path, params={"token": ALICE}).status_code == 401
    ticket = alice.post(f"/v1/jobs/{job['id']}/stream-ticket").json()["ticket"]
    msgs = read_sse(anon, path, params={"ticket": ticket})
    assert [m["id"] for m in msgs if "id" in m] == [m["id"] for m in full]
    assert anon.get(path).status_code == 401
    assert alice.get(path, headers={"Last-Event-ID": "not-an-id"}).status_code == 422


def test_sse_is_live_with_keepalives_and_cancel_ends_it(alice):
    job = alice.post("/v1/jobs", json={"spec": TINY, "labels": {"mode": "slow"}}).json()
    jid = job["id"]
    seen = read_sse(
        alice,
        f"/v1/jobs/{jid}/events",
        until=lambda m: m.get("event") == "train_window" and m["data"]["step"] >= 5,
    )
    last = [m for m in seen if "id" in m][-1]["id"]
    r = alice.post(f"/v1/jobs/{jid}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    rest = read_sse(alice, f"/v1/jobs/{jid}/events", headers={"Last-Event-ID": last}, timeout=20)
    statuses = [m["data"]["status"] for m in rest if m.get("event") == "status"]
    assert statuses == ["cancelled"] and rest[-1]["event"] == "end"
    assert rest[-1]["data"] == {"status": "cancelled"}
    got = alice.get(f"/v1/jobs/{jid}").json()
    assert got["status"] == "cancelled" and got["error"] == "cancelled on request"
    assert alice.post(f"/v1/jobs/{jid}/cancel").status_code == 409


def test_keepalive_comments_while_waiting(settings, alice):
    # a running job with no new events: the stream sends comments, not silence
    job = alice.post("/v1/jobs", json={"spec": TINY, "labels": {"mode": "quiet"}}).json()
    wait_status(alice, job["id"], lambda s: s == "running")
    msgs = read_sse(
        alice,
        f"/v1/jobs/{job['id']}/events",
        until=lambda m: "comment" in m and m["comment"].startswith(": keepalive"),
        timeout=20,
    )
    assert [m["data"]["status"] for m in msgs if m.get("event") == "status"] == [
        "queued",
        "starting",
        "running",
    ]
    alice.post(f"/v1/jobs/{job['id']}/cancel")
    wait_status(alice, job["id"], lambda s: s in TERMINAL)


def test_metrics_poll_by_cursor(alice):
    job = alice.post("/v1/jobs", json={"spec": TINY}).json()
    wait_status(alice, job["id"], lambda s: s in TERMINAL)
    path = f"/v1/jobs/{job['id']}/metrics"
    everything = alice.get(path, params={"limit": 1000}).json()
    n = len(everything["data"])
    assert n > 8 and everything["next"] == everything["data"][-1]["id"]
    got, cursor = [], None
    while True:
        page = alice.get(path, params={"limit": 3, **({"after": cursor} if cursor else {})}).json()
        if not page["data"]:
            assert page["next"] == cursor
            break
        assert len(page["data"]) <= 3
        got += page["data"]
        cursor = page["next"]
    assert got == everything["data"]
    first = everything["data"][0]["event"]
    assert first["type"] == "status" and first["status"] == "queued"
    assert alice.get(path, params={"after": "x"}).status_code == 422
    assert alice.get(path, params={"limit": 0}).status_code == 422


def test_delete_only_finished_jobs(alice):
    job = alice.post("/v1/jobs", json={"spec": TINY, "labels": {"mode": "slow"}}).json()
    wait_status(alice, job["id"], lambda s: s == "running")
    r = alice.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
    alice.post(f"/v1/jobs/{job['id']}/cancel")
    wait_status(alice, job["id"], lambda s: s in TERMINAL)
    assert alice.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert alice.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert alice.get(f"/v1/jobs/{job['id']}/metrics").status_code == 404
    assert alice.delete(f"/v1/jobs/{job['id']}").status_code == 404


def test_failed_job_reports_why(alice):
    job = alice.post("/v1/jobs", json={"spec": TINY, "labels": {"mode": "fail"}}).json()
    done = wait_status(alice, job["id"], lambda s: s in TERMINAL)
    assert done["status"] == "failed" and done["error"] == "data.path: no such file (fake failure)"
    assert "exited with code 3" in done["error_log"] and "fake failure" in done["error_log"]
    assert isinstance(httpx, object)
