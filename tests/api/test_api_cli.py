"""The CLI against a real server: ``rectrain serve`` with its embedded Redis, then
``submit --follow``, ``jobs``, ``cancel``; the embedded Redis keeps jobs across restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from api_helpers import REPO, ProcessServer
from test_api_basics import TINY

from services.settings import DEV_TOKEN


def _cli(url, *args, token=DEV_TOKEN, timeout=60):
    env = dict(os.environ, RECTRAIN_API_URL=url, RECTRAIN_TOKEN=token)
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
    )


def test_serve_embedded_redis_and_the_client_commands(tmp_path, fake_trainer_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "RAY_ADDRESS", "RECTRAIN_API_TOKENS", "RECTRAIN_ENV")
    }
    # jobs as local subprocesses: the Ray head that serve owns by default is tested in
    # test_api_queue.py (it costs a Ray start)
    env.update(
        RECTRAIN_DATA_DIR=str(tmp_path / "data"),
        RECTRAIN_TRAINER_MODULE="fake_trainer",
        RECTRAIN_LAUNCHER="local",
    )
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    api = ProcessServer(env).start(tmp_path / "serve.log")
    try:
        banner = (tmp_path / "serve.log").read_text()
        out = _cli(api.url, "submit", str(spec), "--follow", "--label", "team=ads")
        assert out.returncode == 0, out.stderr + out.stdout
        assert (
            "submitted job" in out.stdout and "train NE" in out.stdout and "[status] succeeded" in out.stdout
        )
        assert "selected pass 1 (*, lowest validation NE 0.9000): test NE 0.9300" in out.stdout
        assert "oracle NE (true click probabilities): validation 0.8000  test 0.8100" in out.stdout
        jid = out.stdout.split("submitted job ", 1)[1].split()[0]
        jobs = _cli(api.url, "jobs")
        assert jobs.returncode == 0 and jid in jobs.stdout and "succeeded" in jobs.stdout
        out = _cli(api.url, "cancel", jid)
        assert out.returncode == 1 and "409" in out.stderr
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"model": {"hash_size": 1}}))
        out = _cli(api.url, "submit", str(bad))
        assert out.returncode == 1 and "model.hash_size" in out.stderr
        assert _cli(api.url, "jobs", token="wrong").returncode == 1
    finally:
        api.stop()
    assert "dev token: " + DEV_TOKEN in banner and "embedded" in banner
    # the embedded Redis persisted the job: a new server process serves it
    api = ProcessServer(env, port=api.port).start(tmp_path / "serve2.log")
    try:
        jobs = _cli(api.url, "jobs", "--json")
        page = json.loads(jobs.stdout)
        assert (
            page["count"] == 1 and page["data"][0]["id"] == jid and page["data"][0]["status"] == "succeeded"
        )
        assert page["data"][0]["summary"]["test_ne_at_selected"] is not None
    finally:
        api.stop()
