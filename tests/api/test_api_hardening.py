"""Issue 17 over the API (real uvicorn, real Redis, the stand-in trainer): data roots and
service maxima at submit, wall-clock limit, SSE flood, stream tickets and access logs,
/metrics token and port."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from api_helpers import ALICE, BOB, ThreadServer, client_for, read_sse, wait_status
from test_api_basics import TINY

from services.settings import Settings
from tests.net import free_port


@pytest.fixture
def roots(tmp_path):
    root = tmp_path / "roots"
    (root / "team").mkdir(parents=True)
    (root / "team" / "clicks.csv").write_text("label,day,u\n1,0,a\n0,1,b\n")
    (tmp_path / "other-tenant.csv").write_text("label,day,u\n1,0,a\n")
    (root / "link.csv").symlink_to(tmp_path / "other-tenant.csv")
    return root


@pytest.fixture
def settings(settings: Settings, roots) -> Settings:
    return settings.model_copy(
        update={
            "data_roots": str(roots),
            "max_workers": 4,
            "max_wall_seconds": 3600,
            "sse_max_streams_per_owner": 150,
            "sse_max_streams": 400,
        }
    )


def _table(path: str) -> dict:
    return {
        **TINY,
        "data": {
            "source": "table",
            "path": path,
            "columns": {"label": "label", "day": "day", "sparse": ["u"]},
        },
    }


def _detail(r: httpx.Response) -> dict:
    assert r.status_code == 422, r.text
    return {tuple(e["loc"]): e["msg"] for e in r.json()["detail"]}


def test_data_roots_at_submit(alice, roots, tmp_path):
    escapes = [
        str(tmp_path / "other-tenant.csv"),
        f"{roots}/team/../../other-tenant.csv",
        str(roots / "link.csv"),
        f"file://{tmp_path}/other-tenant.csv",
        "/etc/passwd",
        str(tmp_path / "does-not-exist.csv"),
    ]
    texts = []
    for p in escapes:
        e = _detail(alice.post("/v1/jobs", json={"spec": _table(p)}))
        msg = e[("body", "spec", "data", "path")]
        assert str(roots) in msg and "RECTRAIN_DATA_ROOTS" in msg, msg
        texts.append(msg.replace(repr(p), "P"))
    assert len(set(texts)) == 1  # one text whether or not the file exists
    ok = alice.post("/v1/jobs", json={"spec": _table(str(roots / "team" / "clicks.csv"))})
    assert ok.status_code == 201, ok.text


def test_service_maxima_at_submit(alice):
    e = _detail(
        alice.post(
            "/v1/jobs",
            json={"spec": {**TINY, "scaling": {"num_workers": 64}, "metrics": {"window_size": 1 << 20}}},
        )
    )
    assert "RECTRAIN_MAX_WORKERS" in e[("body", "spec", "scaling", "num_workers")]
    huge = {
        **TINY,
        "model": {**TINY["model"], "hash_size": 2**31 - 1},
        "scaling": {"memory_per_worker_gb": 4096},
    }
    e = _detail(alice.post("/v1/jobs", json={"spec": huge}))
    assert "RECTRAIN_MAX_MEMORY_PER_WORKER_GB" in e[("body", "spec", "scaling", "memory_per_worker_gb")]
    e = _detail(alice.post("/v1/jobs", json={"spec": {**TINY, "training": {"max_wall_seconds": 7200}}}))
    assert "RECTRAIN_MAX_WALL_SECONDS" in e[("body", "spec", "training", "max_wall_seconds")]
    e = _detail(
        alice.post("/v1/jobs", json={"spec": {**TINY, "data": {"synthetic": {"signal_scale": "Infinity"}}}})
    )
    assert any("signal_scale" in k[-1] for k in e)


def test_wall_clock_limit_cancels(alice):
    spec = {**TINY, "training": {"num_passes": 2, "max_wall_seconds": 1}}
    job = alice.post("/v1/jobs", json={"spec": spec, "labels": {"mode": "stubborn"}}).json()
    done = wait_status(alice, job["id"], lambda s: s in ("succeeded", "failed", "cancelled"), timeout=30)
    assert done["status"] == "cancelled", done
    assert "wall-clock limit" in done["error"] and "max_wall_seconds" in done["error"]


def test_sse_flood_is_bounded_and_others_keep_working(server, alice, bob):
    """200 streams by one owner on one live job: 150 (the per-owner cap) stream, 50 get 429
    at once; meanwhile other requests answer 200 and another owner's stream goes on."""
    mine = alice.post("/v1/jobs", json={"spec": TINY, "labels": {"mode": "slow"}}).json()
    theirs = bob.post("/v1/jobs", json={"spec": TINY, "labels": {"mode": "slow"}}).json()
    wait_status(alice, mine["id"], lambda s: s == "running")
    wait_status(bob, theirs["id"], lambda s: s == "running")

    async def flood():
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {ALICE}"}, limits=limits, timeout=30
            ) as c,
            httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {BOB}"}, timeout=30
            ) as b,
        ):
            release = asyncio.Event()
            codes: list[int] = []
            got: list[int] = []

            async def one():
                seen: list[int] = []
                async with c.stream("GET", f"/v1/jobs/{mine['id']}/events") as r:
                    codes.append(r.status_code)
                    if r.status_code != 200:
                        return
                    # keep reading (leaving the iterator would close the connection)
                    async for line in r.aiter_lines():
                        if line.startswith("event: train_window") and len(got) < 200 and not seen:
                            seen.append(1)
                            got.append(1)
                        if release.is_set():
                            break

            tasks = [asyncio.create_task(one()) for _ in range(200)]
            deadline = time.monotonic() + 60
            while len(got) + codes.count(429) < 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            # while 150 streams are open: other requests answer, bob's stream flows
            t0 = time.monotonic()
            for _ in range(5):
                assert (await c.get(f"/v1/jobs/{mine['id']}")).status_code == 200
                assert (await b.get("/v1/jobs")).status_code == 200
            other_latency = (time.monotonic() - t0) / 10
            bob_events = 0
            async with b.stream("GET", f"/v1/jobs/{theirs['id']}/events") as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    bob_events += line.startswith("event: train_window")
                    if bob_events >= 3:
                        break
            release.set()
            await asyncio.gather(*tasks)
            return codes, got, bob_events, other_latency

    codes, got, bob_events, latency = asyncio.run(flood())
    assert sorted(set(codes)) == [200, 429] and codes.count(200) == 150 and codes.count(429) == 50, codes
    assert len(got) == 150 and all(n >= 1 for n in got)
    assert bob_events >= 3 and latency < 5.0
    alice.post(f"/v1/jobs/{mine['id']}/cancel")
    bob.post(f"/v1/jobs/{theirs['id']}/cancel")


def test_hub_admission_counts_owners_and_total():
    from services.stream_hub import StreamHub, StreamLimit

    hub = StreamHub(None, block_ms=100, max_streams=3, max_per_owner=2)
    a1, a2 = hub.acquire("a"), hub.acquire("a")
    with pytest.raises(StreamLimit, match="PER_OWNER"):
        hub.acquire("a")
    b1 = hub.acquire("b")
    with pytest.raises(StreamLimit, match=r"RECTRAIN_SSE_MAX_STREAMS\)"):
        hub.acquire("c")
    for s in (a1, a2, b1, b1):  # release is idempotent
        s.release()
    assert hub.total == 0 and not hub.by_owner


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_no_tokens_in_urls_or_access_logs(settings):
    from api.main import create_app

    cap = _Capture()
    access = logging.getLogger("uvicorn.access")
    s = ThreadServer(create_app(settings))
    s.server.config.access_log = True
    s.server.config.log_level = logging.INFO
    s.start()
    access.addHandler(cap)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        with client_for(s.url, ALICE) as alice, client_for(s.url, None) as anon:
            job = alice.post("/v1/jobs", json={"spec": TINY}).json()
            other = alice.post("/v1/jobs", json={"spec": TINY}).json()
            # the API token is refused in the URL...
            assert anon.get(f"/v1/jobs/{job['id']}/events", params={"token": ALICE}).status_code == 401
            # ...a stream ticket opens one job's stream
            r = alice.post(f"/v1/jobs/{job['id']}/stream-ticket")
            assert r.status_code == 201, r.text
            ticket = r.json()["ticket"]
            assert r.json()["expires_in"] == settings.stream_ticket_ttl_s
            assert anon.get(f"/v1/jobs/{other['id']}/events", params={"ticket": ticket}).status_code == 401
            assert anon.get(f"/v1/jobs/{job['id']}/events", params={"ticket": "0" * 48}).status_code == 401
            msgs = read_sse(
                anon,
                f"/v1/jobs/{job['id']}/events",
                params={"ticket": ticket},
                until=lambda m: m.get("event") == "end",
            )
            assert msgs[-1]["data"] == {"status": "succeeded"}
            assert client_for(s.url, BOB).post(f"/v1/jobs/{job['id']}/stream-ticket").status_code == 404
        deadline = time.monotonic() + 5
        while not any("stream-ticket" in ln for ln in cap.lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        text = "\n".join(cap.lines)
        assert "/events?" in text and "token=[redacted]" in text and "ticket=[redacted]" in text, text
        assert ALICE not in text and ticket not in text
    finally:
        access.removeHandler(cap)
        access.setLevel(old_level)
        s.stop()


def test_metrics_token_and_separate_port(settings):
    from api.main import create_app

    s = ThreadServer(create_app(settings.model_copy(update={"metrics_token": "m" * 32}))).start()
    try:
        assert httpx.get(s.url + "/metrics").status_code == 401
        assert httpx.get(s.url + "/metrics", headers={"Authorization": f"Bearer {ALICE}"}).status_code == 401
        r = httpx.get(s.url + "/metrics", headers={"Authorization": "Bearer " + "m" * 32})
        assert r.status_code == 200 and "rectrain_jobs" in r.text
    finally:
        s.stop()
    port = free_port()
    s = ThreadServer(create_app(settings.model_copy(update={"metrics_port": port}))).start()
    try:
        assert httpx.get(s.url + "/metrics").status_code == 404
        deadline = time.monotonic() + 15
        while True:
            r = httpx.get(f"http://127.0.0.1:{port}/metrics")
            if "rectrain_redis_up 1.0" in r.text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 200 and "rectrain_redis_up 1.0" in r.text
    finally:
        s.stop()
