"""``rectrain study``: --plan prints size and cost; through a service with --follow it
prints progress and the answer; with no service it runs on local Ray one run after
another (the session Ray here) and prints the same answer."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml
from api_helpers import ProcessServer, settings_env
from test_api_basics import TINY
from test_api_cli import _cli


def _write(tmp_path, **kw):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**TINY, "scaling": {"num_workers": 1}}))
    study = {
        "name": "cli study",
        "base": "base.yaml",
        "variants": [{"regularizers": [{"type": "sparse_l2", "weight": [1e-4, 1e-3]}]}],
        "seeds": 2,
        "passes": 2,
        **kw,
    }
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(study))
    return p


def test_plan_and_follow_through_the_service(tmp_path, settings):
    path = _write(tmp_path)
    out = _cli("http://127.0.0.1:9", "study", str(path), "--plan")
    assert out.returncode == 0, out.stderr
    assert "3 arms (baseline + 2) x 2 seeds [0, 1] = 6 runs of 2 passes" in out.stdout
    assert "sparse_l2 weight=0.001" in out.stdout and "min one run after another" in out.stdout
    bad = _write(tmp_path, seeds=[3, 3])
    out = _cli("http://127.0.0.1:9", "study", str(bad), "--plan")
    assert out.returncode == 2 and "seeds: repeated seeds [3]" in out.stderr

    env = settings_env(settings.model_copy(update={"trainer_module": "fake_study_trainer"}))
    api = ProcessServer(env).start(tmp_path / "api.log")
    try:
        path = _write(tmp_path)
        out = _cli(api.url, "study", str(path), "--follow", token="tok-alice", timeout=120)
        assert out.returncode == 0, out.stderr + out.stdout
        assert "submitted study" in out.stdout and "6/6 runs finished" in out.stdout
        assert "After 2 passes: beats the baseline: " in out.stdout
        # the stand-in's effect at 2 passes: 0.008 +- its noise
        assert re.search(r"sparse_l2 weight=0\.001 by 0\.00[78]\d NE", out.stdout), out.stdout
        listing = _cli(api.url, "studies", token="tok-alice")
        assert "cli study" in listing.stdout and "succeeded" in listing.stdout
    finally:
        api.stop()


@pytest.mark.ray
@pytest.mark.slow
def test_without_a_service_it_runs_on_local_ray_one_after_another(tmp_path, ray_address):
    path = _write(tmp_path, variants=[{"regularizers": [{"type": "dropout", "p": 0.2}]}], seeds=[0], passes=1)
    env_out = tmp_path / "out"
    os.environ["RAY_ADDRESS"] = ray_address
    try:
        out = _cli("http://127.0.0.1:9", "study", str(path), "--out", str(env_out), timeout=400)
    finally:
        os.environ.pop("RAY_ADDRESS", None)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    assert "no rectrain service at http://127.0.0.1:9: running the 2 runs here" in out.stdout
    assert "[1/2] baseline · seed 0" in out.stdout and "[2/2] dropout · seed 0" in out.stdout
    doc = json.loads((env_out / "study.json").read_text())
    assert set(doc["run_passes"]) == {"baseline/s0", "v0/s0"}
    row = doc["results"]["per_pass"][0]["arms"][1]
    assert row["delta_test_ne"]["n"] == 1 and row["delta_test_ne"]["ci_low"] is None  # one seed
    assert "one seed" in out.stdout
    assert (env_out / "study.csv").read_text().startswith("pass,arm,label")
    report = (env_out / "report.html").read_text()
    assert report.startswith("<!doctype html>") and "id='headline-table'" in report
    # warm execution: where the time went, per run and in all; only the selected pass is kept
    assert (
        "time: " in out.stdout
        and "per-run overhead (wall - waiting - training - evaluation) median" in out.stdout
    )
    walls = doc["run_wall_split"]
    assert walls["baseline/s0"]["data_s"] > 0 and walls["v0/s0"]["data_s"] == 0  # data built once
    assert doc["wall_totals"]["training_s"] == sum(w["training_s"] for w in walls.values())
    assert sorted(p.name for p in (env_out / "v0-s0" / "checkpoints").iterdir()) == ["pass_0001"]


def test_follow_lines_say_the_time_left_once_runs_have_finished():
    from services.study_cli import _progress_line

    p = {"finished": 3, "total": 9, "succeeded": 3, "failed": 0, "cancelled": 0, "running": 2, "starting": 0}
    p |= {"queued": 4, "unsubmitted": 0, "passes_done": 10, "passes_total": 27}
    assert _progress_line({"status": "running", "progress": p, "eta_seconds": 150.0}).endswith(
        "passes 10/27; about 2 min left"
    )
    assert _progress_line({"status": "running", "progress": p, "eta_seconds": None}).endswith("passes 10/27")
