"""Admission in one place (services/admission.py, docs/admission.md): one ``POST /v1/jobs``
followed to the start of its training, each admission check counted where it runs.

The API is the real one (a uvicorn thread of this process, real Redis); the trainer's
side is ``rectrain run`` as the local launcher starts it (the spec the job record holds,
``--job-id``), run in this process with ``ray.init`` a no-op and Ray Train's
``TorchTrainer`` replaced by one that runs the worker function here (a world of one), so
every check is seen by the counters. Before admission moved into one place, the same
count was: memory 3, this machine's CPUs 2, init_from at run time 2 (driver + worker).
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import redis
from test_api_basics import TINY
from test_api_model import _finished_job, trained_run  # noqa: F401  (a fixture)

from services import keys

ONCE = {
    "limits": 1,  # services.admission.check_job_limits: service maxima, data roots
    "memory": 1,  # JobSpec.check_capacity: the memory estimate (was: API + trainer CLI + driver)
    "init_from": 1,  # services.admission.resolve_init_from: ownership, signature, resolution
    "tracking": 1,  # services.tracking.apply_tracking_defaults (via admission)
    "cluster": 1,  # services.capacity.never_fits (via admission)
    "queue_quota": 1,  # JobStore.create with max_queued: the quota, in its transaction
    "init_from_at_run_time": 1,  # trainer.lifecycle.prepare_init_from (was: driver + every worker)
    "local_fit": 1,  # trainer.launch.check_local_fit: this machine's CPUs (was: twice)
}


def _counted(counts: Counter, name: str, fn, when=lambda *a, **k: True):
    if asyncio.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def acall(*a, **k):
            if when(*a, **k):
                counts[name] += 1
            return await fn(*a, **k)

        return acall

    @functools.wraps(fn)
    def call(*a, **k):
        if when(*a, **k):
            counts[name] += 1
        return fn(*a, **k)

    return call


def test_each_admission_check_runs_once_from_post_to_the_trainers_start(
    alice,
    settings,
    trained_run,  # noqa: F811  (the fixture imported above)
    tmp_path,
    monkeypatch,
):
    import ray
    import ray.train.torch  # (patched below)

    import services.admission as admission
    import trainer.launch as launch
    import trainer.lifecycle as lifecycle
    import trainer.worker as worker
    from services.jobs import JobStore
    from trainer import shared_storage
    from trainer.cli import main
    from trainer.session import LocalSession
    from trainer.spec import JobSpec

    source = _finished_job(alice, settings, trained_run)  # a succeeded job to start from

    counts: Counter = Counter()
    for name, attr in (
        ("limits", "check_job_limits"),
        ("init_from", "resolve_init_from"),
        ("tracking", "apply_tracking_defaults"),
        ("cluster", "never_fits"),
    ):
        monkeypatch.setattr(admission, attr, _counted(counts, name, getattr(admission, attr)))
    monkeypatch.setattr(JobSpec, "check_capacity", _counted(counts, "memory", JobSpec.check_capacity))
    monkeypatch.setattr(
        JobStore,
        "create",
        _counted(
            counts, "queue_quota", JobStore.create, when=lambda *a, **k: k.get("max_queued") is not None
        ),
    )
    # the driver imported it by name; a worker imports it from trainer.lifecycle
    for mod in (launch, lifecycle):
        monkeypatch.setattr(
            mod, "prepare_init_from", _counted(counts, "init_from_at_run_time", lifecycle.prepare_init_from)
        )
    monkeypatch.setattr(launch, "check_local_fit", _counted(counts, "local_fit", launch.check_local_fit))

    # 1. the control plane: POST /v1/jobs, warm-started from the owner's succeeded job
    spec = {**TINY, "training": {"num_passes": 1, "init_from": {"job": source}}}
    r = alice.post("/v1/jobs", json={"spec": spec})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    alice.post(f"/v1/jobs/{job_id}/cancel")  # the in-process dispatcher's stand-in trainer: not needed
    assert set(admission.JOB_CHECKS) <= set(ONCE)
    service = {k: counts[k] for k in admission.JOB_CHECKS}  # services/admission.py's, in order
    assert service == {k: 1 for k in service}, counts

    # 2. the trainer: what the local launcher runs (LocalBackend: the record's spec as
    # spec.json, `rectrain run spec.json --run-dir ... --job-id ...`), Ray Train's
    # TorchTrainer running its worker function here
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as rc:
        record_spec = json.loads(rc.hget(keys.job_key(job_id), "spec"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(json.dumps(record_spec))
    ran: dict = {}

    class TorchTrainer:
        def __init__(self, fn, *, train_loop_config, **_):
            self.fn, self.config = fn, train_loop_config

        def fit(self):
            ran["config"] = self.config
            self.fn(self.config)  # trainer.worker.train_worker, a world of one in this process
            return SimpleNamespace(metrics={"passes": ran["passes"], "timings": {}})

    real_run_worker = worker.run_worker

    def run_worker(*a, **k):
        t = real_run_worker(*a, **k)
        ran["passes"] = t.passes
        return t

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", TorchTrainer)
    monkeypatch.setattr(worker, "run_worker", run_worker)
    monkeypatch.setattr(worker, "RaySession", lambda use_gpu: LocalSession(run_dir))
    monkeypatch.setattr(ray, "init", lambda *a, **k: None)  # a local Ray "started": none is
    monkeypatch.setattr(shared_storage, "check_shared", lambda *a, **k: None)  # (needs Ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RECTRAIN_STORAGE_URI", raising=False)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        rc_ = main(
            [
                "run",
                str(run_dir / "spec.json"),
                "--run-dir",
                str(run_dir),
                "--job-id",
                job_id,
                "--no-progress",
            ]
        )
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert rc_ == 0
    assert ran["config"]["init_from_checked"] is True
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e.get("phase") == "warm_start" for e in events)  # it did start from the source job
    assert json.loads((run_dir / "results.json").read_text())["status"] == "succeeded"

    assert dict(counts) == ONCE
    assert Path(run_dir / "spec.yaml").exists()
