"""Helpers for API tests: a real uvicorn on loopback (in a thread, or as a subprocess that
can be restarted), httpx clients with tokens, and an SSE reader."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from services.settings import Settings
from tests.servers import ProcessServer, ThreadServer  # noqa: F401  (the API tests import them from here)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ALICE, BOB = "tok-alice", "tok-bob"
TOKENS = f"{ALICE}:alice,{BOB}:bob"


def client_for(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def settings_env(settings: Settings) -> dict[str, str]:
    from services.launcher import settings_env as env_of

    return env_of(settings, settings.redis_url)


def read_sse(client: httpx.Client, path: str, *, headers=None, params=None, until=None, timeout=60.0):
    """Collect SSE messages (dicts with id/event/data) until ``until(msg)`` or the stream ends."""
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", path, headers=headers or {}, params=params, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        msg: dict = {}
        for line in r.iter_lines():
            if time.monotonic() > deadline:
                raise TimeoutError(f"SSE: condition not met in {timeout}s; got {out[-5:]}")
            if line == "":
                if "event" in msg or "data" in msg:
                    if "data" in msg:
                        msg["data"] = json.loads(msg["data"])
                    out.append(msg)
                    if until and until(msg):
                        return out
                msg = {}
                continue
            if line.startswith(":"):
                out.append({"comment": line})
                if until and until(out[-1]):
                    return out
                continue
            k, _, v = line.partition(":")
            msg[k] = v[1:] if v.startswith(" ") else v
    return out


def wait_status(client: httpx.Client, job_id: str, pred, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        j = client.get(f"/v1/jobs/{job_id}").json()
        if pred(j["status"]):
            return j
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {j['status']} after {timeout}s: {j.get('error')}")
        time.sleep(0.2)


TERMINAL = ("succeeded", "failed", "cancelled")
