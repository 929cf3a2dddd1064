"""The REST API on a real uvicorn (loopback) and real Redis: contract, auth, limits, errors."""

from __future__ import annotations

import httpx
from api_helpers import ALICE, client_for

from tests.net import free_port

TINY = {
    "data": {"synthetic": {"examples_per_day": 4000, "num_users": 500, "num_ads": 200}, "batch_size": 256},
    "model": {"hash_size": 2000, "embedding_dim": 8, "dense_arch": [16, 8], "over_arch": [16]},
    "training": {"num_passes": 2},
    "metrics": {"window_size": 1024, "report_every_steps": 5},
}


def test_openapi_lists_every_route_with_auth(server):
    from api.main import create_app

    spec = httpx.get(server.url + "/openapi.json").json()
    paths = {p: set(ops) for p, ops in spec["paths"].items()}
    assert paths == {
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
        "/v1/jobs": {"get", "post"},
        "/v1/jobs/{job_id}": {"get", "delete"},
        "/v1/jobs/{job_id}/cancel": {"post"},
        "/v1/jobs/{job_id}/metrics": {"get"},
        "/v1/jobs/{job_id}/events": {"get"},
        "/v1/studies": {"get", "post"},
        "/v1/studies/plan": {"post"},
        "/v1/studies/{study_id}": {"get", "delete"},
        "/v1/studies/{study_id}/cancel": {"post"},
        "/v1/studies/{study_id}/export.csv": {"get"},
        "/v1/studies/{study_id}/export.json": {"get"},
        "/v1/studies/{study_id}/report.html": {"get"},
        "/v1/studies/{study_id}/events": {"get"},
        "/v1/studies/{study_id}/stream-ticket": {"post"},
        "/v1/jobs/{job_id}/stream-ticket": {"post"},
        "/v1/jobs/{job_id}/model": {"get"},
    }
    for path, ops in spec["paths"].items():
        for op in ops.values():
            assert op.get("summary") and op.get("operationId")
            if path.startswith("/v1"):
                assert op.get("security") == [{"HTTPBearer": []}], path
                assert "401" in op["responses"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # the job spec is in the schema, field by field
    schemas = spec["components"]["schemas"]
    assert "JobSpec" in schemas and "hash_size" in schemas["ModelSpec"]["properties"]
    assert set(schemas["JobPublic"]["required"]) >= {"id", "status", "spec", "summary", "passes_done"}
    events = spec["paths"]["/v1/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {p["name"] for p in events["parameters"]} >= {"ticket", "Last-Event-ID", "after"}
    assert create_app  # importable without side effects


def test_health_ready_and_prometheus(server, alice):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json() == {"status": "ok"}
    alice.get("/v1/jobs")
    m = httpx.get(server.url + "/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert 'rectrain_jobs{status="queued"}' in m.text
    assert 'rectrain_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/jobs"}' in m.text
    assert 'rectrain_http_requests_total{method="GET",route="/v1/jobs",status="200"}' in m.text


def test_auth_required_and_owners_isolated(server, alice, bob):
    anon = client_for(server.url, None)
    r = anon.get("/v1/jobs")
    assert r.status_code == 401 and r.json() == {"detail": "Not authenticated"}
    assert r.headers["www-authenticate"] == "Bearer"
    assert client_for(server.url, "nope").get("/v1/jobs").json() == {"detail": "Invalid token"}
    assert anon.post("/v1/jobs", json={"spec": TINY}).status_code == 401
    # tokens are never accepted in the query string
    assert anon.get("/v1/jobs", params={"token": ALICE}).status_code == 401

    job = alice.post("/v1/jobs", json={"spec": TINY, "name": "a", "labels": {"mode": "slow"}}).json()
    jid = job["id"]
    assert job["owner"] == "alice"
    for method, path in [
        ("GET", f"/v1/jobs/{jid}"),
        ("POST", f"/v1/jobs/{jid}/cancel"),
        ("DELETE", f"/v1/jobs/{jid}"),
        ("GET", f"/v1/jobs/{jid}/metrics"),
        ("GET", f"/v1/jobs/{jid}/events"),
    ]:
        r = bob.request(method, path)
        assert r.status_code == 404 and r.json() == {"detail": "Job not found"}, (method, path)
    assert bob.get("/v1/jobs").json() == {"data": [], "count": 0}
    assert anon.get(f"/v1/jobs/{jid}/events", params={"token": "tok-bob"}).status_code == 401
    assert bob.post(f"/v1/jobs/{jid}/stream-ticket").status_code == 404
    assert alice.get("/v1/jobs/not-a-job-id").status_code == 404
    assert alice.post(f"/v1/jobs/{jid}/cancel").status_code == 202


def test_bad_specs_get_field_level_422(alice):
    def errors(spec, **extra):
        r = alice.post("/v1/jobs", json={"spec": spec, **extra})
        assert r.status_code == 422, r.text
        return {tuple(e["loc"]): e["msg"] for e in r.json()["detail"]}

    e = errors({**TINY, "model": {**TINY["model"], "hash_size": 1}})
    assert ("body", "spec", "model", "hash_size") in e
    e = errors({**TINY, "modle": {}})
    assert e[("body", "spec", "modle")] == "Extra inputs are not permitted"
    e = errors({**TINY, "training": {"num_passes": "many"}})
    assert ("body", "spec", "training", "num_passes") in e
    # a cross-field check names its field; the message has no "Value error," prefix
    e = errors({**TINY, "metrics": {"window_size": 10}})
    assert e[("body", "spec", "metrics", "window_size")].startswith("metrics.window_size: 10 gives")
    # too big for the workers' memory: the capacity estimate
    e = errors({**TINY, "model": {**TINY["model"], "hash_size": 2**31 - 1}})
    msg = e[("body", "spec", "model")]
    assert "GiB per worker" in msg and "scaling.memory_per_worker_gb" in msg
    e = errors(TINY, labels={"bad key": "x"})
    assert any(k[:2] == ("body", "labels") for k in e)
    e = errors(TINY, extra_field=1)
    assert ("body", "extra_field") in e
    r = alice.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], list)


def test_big_bodies_get_413(server, alice, settings):
    big = {"spec": TINY, "name": "x", "labels": {f"k{i}": "v" * 250 for i in range(400)}}
    r = alice.post("/v1/jobs", json=big)
    assert r.status_code == 413 and "too large" in r.json()["detail"]

    # chunked upload without Content-Length: cut off while streaming
    def chunks():
        yield b'{"spec": {}, "name": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    r = alice.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert alice.post("/v1/jobs", json={"spec": TINY, "labels": {"mode": "fail"}}).status_code == 201


def test_unknown_routes_and_methods_are_json(server, alice):
    r = alice.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["detail"] == "Not Found"
    r = alice.put("/v1/jobs")
    assert r.status_code == 405


def test_readyz_503_when_redis_is_gone(settings, monkeypatch):
    """A server pointed at a dead Redis is live but not ready, and says so in JSON."""
    from api_helpers import ThreadServer

    from api.main import create_app

    dead = free_port()
    s2 = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{dead}/0"})
    srv = ThreadServer(create_app(s2)).start()
    try:
        assert httpx.get(srv.url + "/healthz").status_code == 200
        r = httpx.get(srv.url + "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "redis unreachable"
        r = client_for(srv.url, ALICE).get("/v1/jobs")
        assert r.status_code == 503 and r.json() == {"detail": "Redis unavailable"}
    finally:
        srv.stop()
