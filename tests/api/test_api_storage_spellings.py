"""training.init_from.checkpoint by path, with the data roots covering the service's data
directory (an operator with one /data volume): no spelling of a job's storage reaches it
(plain, file://, file://localhost, '..', symlinks, trailing slashes, percent-escapes), for
its owner or another tenant, and every refusal — another tenant's job, a missing path, a
forbidden path — is the same 422 body."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
from api_helpers import TOKENS
from test_api_basics import TINY
from test_api_model import _finished_job, trained_run  # noqa: F401 (module fixture)

from tests.control_plane import control_plane_settings


@pytest.fixture
def settings(redis_url, redis_client, tmp_path, fake_trainer_path):
    data = (tmp_path / "data").resolve()
    (data / "datasets").mkdir(parents=True)
    return control_plane_settings(redis_url, data, api_tokens=TOKENS, data_roots=str(data))


def _spec(checkpoint: str) -> dict:
    return {**TINY, "training": {"num_passes": 1, "init_from": {"checkpoint": checkpoint}}}


def test_no_spelling_of_a_jobs_storage_is_readable_by_path(alice, bob, settings, trained_run):  # noqa: F811
    job_id = _finished_job(alice, settings, trained_run)
    data = Path(settings.data_dir)
    run = data / "runs" / job_id
    ckpt = next((run / "checkpoints").iterdir())  # one of its checkpoint directories
    link = data / "datasets" / "shortcut"
    link.symlink_to(run)
    (data / "datasets" / "runs-link").symlink_to(data / "runs")
    spellings = [
        str(run),
        str(run) + "/",
        str(run) + "//",
        f"file://{run}",
        f"file://{run}/",
        f"file://localhost{run}",
        f"FILE://localhost{run}",
        "file://" + quote(str(run)),
        str(data / "datasets" / ".." / "runs" / job_id),
        f"file://{data}/datasets/../runs/{job_id}",
        str(data / "runs" / "." / job_id),
        str(link),
        f"file://{link}/",
        str(data / "datasets" / "runs-link" / job_id),
        str(ckpt),
        f"file://localhost{ckpt}/",
        str(data),  # a directory above every job's storage
    ]
    bodies = set()
    for who in (bob, alice):  # another tenant, and the owner too: only through init_from.job
        for s in spellings:
            r = who.post("/v1/jobs", json={"spec": _spec(s)})
            assert r.status_code == 422, (s, r.text)
            bodies.add(r.text)
    # a missing job directory, a missing path under a data root, a forbidden path, a
    # relative path, a file:// URI on another host: the same answer, word for word
    for s in [
        str(data / "runs" / ("0" * 16)),
        f"file://{data}/runs/{'0' * 16}",
        str(data / "datasets" / "nothing-here"),
        "/etc",
        f"file://{os.sep}etc/../etc",
        "runs/" + job_id,
        f"file://elsewhere{run}",
    ]:
        r = bob.post("/v1/jobs", json={"spec": _spec(s)})
        assert r.status_code == 422, (s, r.text)
        bodies.add(r.text)
    assert len(bodies) == 1, bodies
    msg = bodies.pop()
    assert "training.init_from.checkpoint: no checkpoint you may start from there" in msg
    assert job_id not in msg and "hash_size" not in msg and "exist" not in msg

    # the owner's way in works; the same checkpoint copied under a data root works by path
    r = alice.post("/v1/jobs", json={"spec": {**TINY, "training": {"init_from": {"job": job_id}}}})
    assert r.status_code == 201, r.text
    shutil.copytree(trained_run, data / "datasets" / "mine")
    r = bob.post("/v1/jobs", json={"spec": _spec(f"file://localhost{data}/datasets/mine/")})
    assert r.status_code == 201, r.text
    resolved = r.json()["spec"]["training"]["init_from"]["checkpoint"]
    assert resolved.startswith(str(data / "datasets" / "mine"))
    bob.post(f"/v1/jobs/{r.json()['id']}/cancel")
    # swapped after submit: the directory replaced by a symlink into alice's job storage;
    # the trainer refuses the changed path instead of following it
    from trainer.errors import RectrainError
    from trainer.lifecycle import prepare_init_from
    from trainer.spec import JobSpec

    spec = JobSpec.model_validate(r.json()["spec"])
    assert prepare_init_from(spec, pinned=True).training.init_from.checkpoint == resolved
    (data / "datasets" / "mine").rename(data / "datasets" / "moved")
    (data / "datasets" / "mine").symlink_to(run)
    with pytest.raises(RectrainError, match="changed since it was checked"):
        prepare_init_from(spec, pinned=True)


def test_only_signed_checkpoints_are_read_by_path(bob, settings, trained_run, tmp_path, capsys):  # noqa: F811
    """Under a data root, a checkpoint whose files changed since the service wrote them is
    refused at submit (422 naming the field) and by `rectrain export` (one line, exit 2)."""
    import pickle

    from cli.main import main

    data = Path(settings.data_dir)
    bad = data / "datasets" / "tampered"
    shutil.copytree(trained_run, bad)
    ckpt = next((bad / "checkpoints").iterdir())
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    (ckpt / ".metadata").write_bytes(pickle.dumps(Payload()))
    r = bob.post("/v1/jobs", json={"spec": _spec(str(bad))})
    assert r.status_code == 422, r.text
    assert "training.init_from.checkpoint: not a checkpoint this service wrote" in r.text
    assert ".metadata changed since rectrain wrote it" in r.text
    capsys.readouterr()
    assert main(["export", str(bad), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a checkpoint this service wrote" in err, err
    assert not marker.exists() and not (tmp_path / "m.pt").exists()


def test_data_path_into_a_jobs_storage_reads_like_outside_the_roots(alice, bob, settings, trained_run):  # noqa: F811
    job_id = _finished_job(alice, settings, trained_run)
    data = Path(settings.data_dir)
    cols = {"label": "click", "day": "day", "sparse": ["user"], "dense": []}

    def submit(path: str):
        spec = {**TINY, "data": {"source": "table", "path": path, "columns": cols}}
        spec["data"] = {k: v for k, v in spec["data"].items() if k != "synthetic"}
        r = bob.post("/v1/jobs", json={"spec": spec})
        assert r.status_code == 422, (path, r.text)
        return r.json()["detail"][0]["msg"].replace(repr(path), "PATH")

    msgs = {
        submit(p)
        for p in [
            f"file://localhost{data}/runs/{job_id}/x.parquet",
            f"{data}/datasets/../runs/{job_id}/x.parquet",
            "/etc/x.parquet",
        ]
    }
    assert len(msgs) == 1 and "is not under an allowed data root" in msgs.pop()
