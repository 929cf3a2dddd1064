"""The model download route (auth, ownership, status, pass) and training.init_from at submit
(own succeeded jobs only, same model, resolved to the checkpoint), over the real API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from api_helpers import TERMINAL, wait_status
from test_api_basics import TINY


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real tiny run directory (checkpoints, spec.yaml, results.json) of TINY at 1 pass."""
    from trainer.loop import LocalSession, Trainer
    from trainer.report import summarize_passes
    from trainer.spec import parse_spec, spec_to_yaml

    d = tmp_path_factory.mktemp("run")
    spec = parse_spec({**TINY, "training": {"num_passes": 1}})
    (d / "spec.yaml").write_text(spec_to_yaml(spec))
    passes = Trainer(spec, LocalSession(d), d).run()
    (d / "results.json").write_text(json.dumps({"passes": passes, **summarize_passes(passes)}))
    return d


def _finished_job(alice, settings, run: Path) -> str:
    """A job the stand-in trainer finishes, with a real run's files in its storage."""
    job = alice.post("/v1/jobs", json={"spec": {**TINY, "training": {"num_passes": 1}}}).json()
    assert wait_status(alice, job["id"], lambda s: s in TERMINAL)["status"] == "succeeded"
    dest = Path(settings.data_dir).resolve() / "runs" / job["id"]
    shutil.copytree(run, dest, dirs_exist_ok=True)
    return job["id"]


def test_download_the_model_with_auth_and_ownership(server, alice, bob, settings, trained_run, monkeypatch):
    from trainer.export import load_model

    job_id = _finished_job(alice, settings, trained_run)
    r = alice.get(f"/v1/jobs/{job_id}/model")
    assert r.status_code == 200, r.text
    assert r.headers["x-rectrain-pass"] == "0"
    assert r.headers["content-type"] == "application/octet-stream"
    assert f"rectrain-{job_id}-pass0.pt" in r.headers["content-disposition"]
    path = Path(settings.data_dir) / "dl.pt"
    path.write_bytes(r.content)
    m = load_model(path)
    assert m.pass_ == 0 and m.spec.model.hash_size == 2000
    # the same twice (the export is kept in the job's storage)
    assert alice.get(f"/v1/jobs/{job_id}/model", params={"pass": 0}).content == r.content

    # the CLI: rectrain export <job id> downloads it
    from api_helpers import ALICE, BOB

    from cli.main import main

    monkeypatch.setenv("RECTRAIN_API_URL", server.url)
    monkeypatch.setenv("RECTRAIN_TOKEN", ALICE)
    out = Path(settings.data_dir) / "cli.pt"
    assert main(["export", job_id, "--out", str(out)]) == 0
    assert out.read_bytes() == r.content
    monkeypatch.setenv("RECTRAIN_TOKEN", BOB)
    assert main(["export", job_id, "--out", str(out) + ".bob"]) == 1
    assert not Path(str(out) + ".bob").exists()
    # the Python client: the same file, its pass; an unkept pass is an ApiError
    from services.client import ApiError, Client

    with Client(server.url, ALICE) as c:
        assert c.download_model(job_id, Path(settings.data_dir) / "py.pt", pass_=0) == 0
        assert (Path(settings.data_dir) / "py.pt").read_bytes() == r.content
        with pytest.raises(ApiError) as e:
            c.download_model(job_id, Path(settings.data_dir) / "py5.pt", pass_=5)
        assert e.value.status == 404 and "pass 5" in e.value.message

    assert bob.get(f"/v1/jobs/{job_id}/model").status_code == 404  # another owner: no such job
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}/model").status_code == 401
    r = alice.get(f"/v1/jobs/{job_id}/model", params={"pass": 5})
    assert r.status_code == 404 and "pass 5" in r.json()["detail"]
    assert alice.get(f"/v1/jobs/{job_id}/model", params={"pass": -1}).status_code == 422

    slow = alice.post("/v1/jobs", json={"spec": TINY, "labels": {"mode": "slow"}}).json()
    r = alice.get(f"/v1/jobs/{slow['id']}/model")
    assert r.status_code == 409 and "succeeded" in r.json()["detail"]
    alice.post(f"/v1/jobs/{slow['id']}/cancel")


def _detail(r) -> str:
    assert r.status_code == 422, r.text
    return " ".join(d["msg"] for d in r.json()["detail"])


def test_init_from_job_is_resolved_and_checked_at_submit(alice, bob, settings, trained_run):
    job_id = _finished_job(alice, settings, trained_run)
    spec = {**TINY, "training": {"num_passes": 1, "init_from": {"job": job_id}}}
    r = alice.post("/v1/jobs", json={"spec": spec})
    assert r.status_code == 201, r.text
    init = r.json()["spec"]["training"]["init_from"]
    assert init["job"] == job_id and init["pass"] == 0
    assert init["checkpoint"].startswith(str(Path(settings.data_dir).resolve() / "runs" / job_id))

    # not yours: the same answer as a job that does not exist
    assert "training.init_from.job: you have no job" in _detail(bob.post("/v1/jobs", json={"spec": spec}))
    missing = {**TINY, "training": {"init_from": {"job": "0" * 16}}}
    assert "training.init_from.job: you have no job" in _detail(
        alice.post("/v1/jobs", json={"spec": missing})
    )
    # another model: every difference listed
    other = {
        **TINY,
        "model": {**TINY["model"], "hash_size": 3000, "embedding_dim": 16, "dense_arch": [16, 16]},
        "training": {"init_from": {"job": job_id}},
    }
    msg = _detail(alice.post("/v1/jobs", json={"spec": other}))
    assert "training.init_from.job: the model to start from differs" in msg
    assert "model.hash_size: 2000 in the source, 3000 here" in msg
    assert "model.embedding_dim: 8 in the source, 16 here" in msg
    # a pass that is not kept
    gone = {**TINY, "training": {"init_from": {"job": job_id, "pass": 4}}}
    assert "training.init_from.pass: pass 4" in _detail(alice.post("/v1/jobs", json={"spec": gone}))
    # not finished
    slow = alice.post("/v1/jobs", json={"spec": TINY, "labels": {"mode": "slow"}}).json()
    running = {**TINY, "training": {"init_from": {"job": slow["id"]}}}
    msg = _detail(alice.post("/v1/jobs", json={"spec": running}))
    assert f"training.init_from.job: job {slow['id']} is" in msg and "succeeded" in msg
    alice.post(f"/v1/jobs/{slow['id']}/cancel")
    # another job's storage by path, even inside the data roots: only through init_from.job
    import asyncio

    from services.admission import resolve_init_from
    from services.settings import Settings
    from trainer.errors import SpecError
    from trainer.spec import parse_spec

    data = Path(settings.data_dir).resolve()
    wide = Settings(data_dir=data, data_roots=str(data))
    by_path = parse_spec({**TINY, "training": {"init_from": {"checkpoint": str(data / "runs" / job_id)}}})
    with pytest.raises(SpecError, match="no checkpoint you may start from there.*training.init_from.job"):
        asyncio.run(resolve_init_from(None, wide, "alice", by_path))  # type: ignore[arg-type]
    # a checkpoint path outside the data roots
    outside = {**TINY, "training": {"init_from": {"checkpoint": str(trained_run)}}}
    assert "training.init_from.checkpoint" in _detail(alice.post("/v1/jobs", json={"spec": outside}))
