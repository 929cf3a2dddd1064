"""The driver: run a job spec on Ray Train and write the run's results.

``run_job`` starts a local Ray when neither ``ray_address`` nor ``RAY_ADDRESS`` is
set (the embedded default), else joins that cluster; then a ``TorchTrainer`` runs
:func:`trainer.worker.train_worker` on ``scaling.num_workers`` workers with gloo on
CPU or NCCL on GPU, restarting from the last checkpoint up to
``training.max_failures`` times.

Storage (:mod:`trainer.storage`): with ``RECTRAIN_STORAGE_URI`` set, the job's
checkpoints (Ray Train's ``storage_path``/``storage_filesystem``), ``spec.yaml`` and
``results.json`` go to ``<uri>/runs/<job id or run name>``; unset, to the local run
directory, which is refused when Ray workers run on other nodes. Running a job again
with the same run directory (or job id and storage) resumes it from its latest
checkpoint, also with another ``scaling.num_workers``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from trainer import shared_storage, storage
from trainer.errors import CapacityError, RectrainError
from trainer.lifecycle import prepare_init_from
from trainer.report import wall_split
from trainer.results import EVENTS_FILE, RESULTS_FILE, RunResult, RunSummary, WarmInfo
from trainer.spec import JobSpec, spec_to_yaml

# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's
# default 2 s), and a worker's ``ray.train.report`` with a checkpoint waits for that poll:
# every pass end paid it, and the run's end once more. A short poll costs the controller
# one small actor call per worker per interval. ``python -m bench.ray_poll_ab`` measures
# both in one run (BENCHMARKS.md). A value the user set is kept.
RAY_TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
RAY_TRAIN_POLL_S = 0.2


def env_ray_address() -> str | None:
    """``RAY_ADDRESS``: Ray's own variable, which ``ray.init`` reads too. It is listed in
    the settings registry (``services.settings.Settings.ray_address``, the README's
    table); the trainer reads it here, once, because trainer/ never imports services/."""
    return os.environ.get("RAY_ADDRESS") or None


def default_run_dir(root: str | Path = "runs") -> Path:
    return Path(root) / time.strftime("run-%Y%m%d-%H%M%S")


def _ensure_ray(spec: JobSpec, ray_address: str | None) -> bool:
    """Connect to Ray; return True when the run is local (this machine's files are
    the workers' files, so the driver can follow rank 0's events.jsonl itself)."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address.startswith(("127.", "localhost"))
    address = ray_address or env_ray_address()
    if address:
        ray.init(address=address, log_to_driver=True)
        return address.startswith(("127.", "localhost"))
    # The local Ray gets this machine's CPUs, never more: a job that needs more was
    # refused (check_local_fit, by the caller before Ray was imported) instead of being
    # silently oversubscribed.
    # Worker logs stay in Ray's log files; the driver prints rank 0's events instead.
    ray.init(
        address="local",
        num_cpus=local_cpus(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.ERROR,
    )
    return True


def absolute_data_path(spec: JobSpec) -> JobSpec:
    """A relative local ``data.path`` made absolute against this (the driver's) working
    directory: Ray Train workers run in their own directories, where the path would
    name nothing. Wildcards and ``{day}`` are kept as they are; URIs are untouched."""
    path = spec.data.path
    if path is None or storage.is_uri(path) or os.path.isabs(path):
        return spec
    return spec.model_copy(update={"data": spec.data.model_copy(update={"path": os.path.abspath(path)})})


def local_cpus() -> int:
    """CPUs of this machine (what a local Ray is started with)."""
    return os.cpu_count() or 1


def check_local_fit(spec: JobSpec) -> None:
    """Refuse, with the numbers, a job whose workers need more CPUs (or GPUs) than this
    machine has: the embedded local Ray is never inflated past the machine."""
    sc = spec.scaling
    need = sc.num_workers * sc.cpus_per_worker
    have = local_cpus()
    if need > have:
        fit = max(int(have // sc.cpus_per_worker), 0)
        raise CapacityError(
            f"scaling.num_workers: {sc.num_workers} workers x {sc.cpus_per_worker:g} CPUs "
            f"(scaling.cpus_per_worker) = {need:g} CPUs, but this machine has {have}; "
            + (f"use at most {fit} workers" if fit else "lower scaling.cpus_per_worker")
            + ", or run on a Ray cluster (RAY_ADDRESS)"
        )
    if sc.use_gpu:
        try:
            import torch

            gpus = torch.cuda.device_count()
        except Exception:  # torch without CUDA
            gpus = 0
        if sc.num_workers > gpus:
            raise CapacityError(
                f"scaling.num_workers: {sc.num_workers} GPU workers (scaling.use_gpu) but this "
                f"machine has {gpus} GPUs; use at most {gpus} workers or scaling.use_gpu: false"
            )


def interactive() -> bool:
    """Whether a person watches this process's output on a terminal: stdout and stderr
    both a TTY. On a pipe, a file or in CI a progress bar's carriage returns would
    interleave with the event lines, so readers print plain lines instead."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class _EventFollower(threading.Thread):
    """Follows run_dir/events.jsonl and prints each event: a human line (windowed NE,
    pass results, lifecycle) with a progress bar on a terminal, or the event itself as
    one JSON line (``json_lines``, for machines)."""

    def __init__(self, path: Path, total_steps: int, progress: bool, json_lines: bool = False) -> None:
        super().__init__(name="rectrain-follow", daemon=True)
        self.path, self.total = path, total_steps
        self.progress = progress and not json_lines
        self.json_lines = json_lines
        self.stop = threading.Event()

    def run(self) -> None:
        from tqdm import tqdm

        from trainer.metrics.events import EventType, format_event
        from trainer.report import format_references

        bar = tqdm(total=self.total, unit="step", leave=False, dynamic_ncols=True) if self.progress else None
        pos = 0
        refs_shown = False
        while True:
            stopping = self.stop.is_set()
            if self.path.exists():
                with open(self.path) as f:
                    f.seek(pos)
                    for line in f:
                        if not line.endswith("\n"):
                            break
                        pos += len(line.encode())
                        ev = json.loads(line)
                        if bar is not None and "total_steps" in ev:
                            bar.total = ev["total_steps"]
                        if bar is not None and ev["type"] in (
                            EventType.TRAIN_WINDOW.value,
                            EventType.PASS.value,
                        ):
                            bar.n = ev["step"]
                            bar.refresh()
                        text = json.dumps(ev, separators=(",", ":")) if self.json_lines else format_event(ev)
                        if text is not None:
                            if bar is not None:
                                bar.write(text)
                            else:
                                print(text, flush=True)
                        first_refs = (
                            ev["type"] == EventType.PASS.value and ev.get("references") and not refs_shown
                        )
                        if first_refs and not self.json_lines:  # (JSON lines carry them in the event)
                            refs_shown = True  # once, with the first pass: the line to beat
                            for ref_line in format_references(RunSummary(references=ev["references"])):
                                if bar is not None:
                                    bar.write(ref_line)
                                else:
                                    print(ref_line, flush=True)
            if stopping:
                break
            time.sleep(0.2)
        if bar is not None:
            bar.close()


def run_job(
    spec: JobSpec,
    *,
    run_dir: str | Path | None = None,
    job_id: str | None = None,
    redis_url: str | None = None,
    progress: bool = True,
    ray_address: str | None = None,
    storage_uri: str | None = None,
    json_lines: bool = False,
) -> RunResult:
    """Train ``spec`` to the end; return (and write to run_dir/results.json, and to the
    job's storage) the results. ``storage_uri`` defaults to ``RECTRAIN_STORAGE_URI``.
    ``progress`` asks for a bar, shown only on a terminal (:func:`interactive`);
    ``json_lines`` prints each event as a JSON line instead of a human line."""
    marks = startup_marks()
    ray_mod = sys.modules.get("ray")
    joining = ray_address or env_ray_address() or (ray_mod is not None and ray_mod.is_initialized())
    if job_id is None:
        # a run the service did not admit (rectrain run): its memory estimate is checked
        # here, once; the service's jobs were admitted at submit (services/admission.py)
        spec.check_capacity()
    if not joining:
        check_local_fit(spec)  # before importing Ray: a refusal costs nothing
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainer.worker import train_worker

    marks["ray_imported"] = time.time()

    spec, run_dir, root, job_store = prepare_run(spec, run_dir, job_id, storage_uri)
    local = connect_ray(spec, ray_address)
    marks["ray_connected"] = time.time()
    publish_spec(spec, run_dir, root, job_store)
    storage_path, storage_fs = storage.ray_storage(storage.join(job_store, "ray"))

    scaling = spec.scaling
    # read by fit() and handed to the controller and the workers (Ray Train propagates it)
    os.environ.setdefault(RAY_TRAIN_POLL_ENV, str(RAY_TRAIN_POLL_S))
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "run_dir": str(run_dir),
            "job_id": job_id,
            "redis_url": redis_url,
            "stdout_sink": not local,
            "job_store": job_store,  # where rank 0 copies its TensorBoard files at the end
            "startup_marks": marks,
            "init_from_checked": True,  # by prepare_run: the workers use it as it is
        },
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=RunConfig(
            name="train",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=spec.training.max_failures),
            # the latest checkpoint and the two best pass ends (trainer/lifecycle.py): the
            # selected pass stays exportable and usable by training.init_from
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="keep_score", checkpoint_score_order="max"
            ),
        ),
    )
    t0 = marks["fit"] = time.time()
    follower = None
    if local:
        follower = _EventFollower(
            run_dir / EVENTS_FILE,
            total_steps=0,
            progress=progress and interactive(),
            json_lines=json_lines,
        )
        follower.start()
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps worker errors; keep the root cause readable
        raise RectrainError(f"training failed: {_root_cause(e)}") from e
    finally:
        if follower is not None:
            follower.stop.set()
            follower.join(5)
    metrics = result.metrics or {}
    wall = time.time() - t0
    return record_results(
        run_dir,
        job_store,
        metrics.get("passes", []),
        job_id=job_id,
        num_workers=scaling.num_workers,
        wall_seconds=wall,
        wall_split=wall_split(wall, metrics.get("timings") or {}),
    )


DISPATCHED_AT_ENV = "RECTRAIN_DISPATCHED_AT"  # the service's dispatch time (the local launcher sets it)


def startup_marks() -> dict[str, float]:
    """The driver's first start-up marks (wall clock): the service's dispatch when it
    gave one (``RECTRAIN_DISPATCHED_AT``), this process's start, now."""
    marks: dict[str, float] = {}
    with contextlib.suppress(ValueError):
        if os.environ.get(DISPATCHED_AT_ENV):
            marks["dispatched"] = float(os.environ[DISPATCHED_AT_ENV])
    with contextlib.suppress(Exception):  # psutil: the process's creation time
        import psutil

        marks["process_start"] = psutil.Process().create_time()
    marks["run_job"] = time.time()
    return marks


def prepare_run(
    spec: JobSpec, run_dir: str | Path | None, job_id: str | None, storage_uri: str | None
) -> tuple[JobSpec, Path, str | None, str]:
    """Before a run starts (Ray Train's or a warm worker group's): the spec resolved
    (``training.init_from`` checked again, once for the run: what can have changed since
    admission; an absolute ``data.path``), the run directory made with its
    ``spec.yaml``; returns (spec, run_dir, storage root, the job's store: its storage
    location, or the run directory). The spec was admitted before: by the service at
    submit (services/admission.py), by :func:`run_job` for ``rectrain run``, by a local
    study's expansion (every arm's spec checked)."""
    # warm start: the checkpoint resolved and checked up front (a job of the service was
    # resolved at submit: its location must not have changed since)
    spec = prepare_init_from(spec, pinned=job_id is not None)
    spec = absolute_data_path(spec)
    run_dir = Path(run_dir or default_run_dir()).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    root = storage.check_uri(storage_uri, "storage_uri") if storage_uri else storage.storage_root()
    job_store = storage.job_location(root, job_id or run_dir.name) if root else str(run_dir)
    (run_dir / "spec.yaml").write_text(spec_to_yaml(spec))
    return spec, run_dir, root, job_store


def connect_ray(spec: JobSpec, ray_address: str | None) -> bool:
    """Connect to Ray (:func:`_ensure_ray`) keeping this process's SIGTERM handler;
    True when the run is local."""
    # ray.init installs its own SIGTERM handler; keep ours (a cancel aborts the run cleanly)
    prev_sigterm = signal.getsignal(signal.SIGTERM)
    local = _ensure_ray(spec, ray_address)
    if threading.current_thread() is threading.main_thread() and prev_sigterm is not None:
        signal.signal(signal.SIGTERM, prev_sigterm)
    return local


def publish_spec(spec: JobSpec, run_dir: Path, root: str | None, job_store: str) -> None:
    """The job's store must be reachable from every worker; it gets ``spec.yaml`` too."""
    shared_storage.check_shared(job_store, explicit=root is not None)
    if job_store != str(run_dir):
        storage.write_text(storage.join(job_store, "spec.yaml"), spec_to_yaml(spec))


def record_results(
    run_dir: Path,
    job_store: str,
    passes: list[dict[str, Any]],
    *,
    job_id: str | None,
    num_workers: int,
    wall_seconds: float,
    wall_split: dict[str, float],
    warm: WarmInfo | None = None,
) -> RunResult:
    """A succeeded run's results from its workers' per-pass results, written
    (:func:`write_results`) and returned: the one place a Ray Train run
    (:func:`run_job`) and a warm group's run (:meth:`trainer.warm.WarmGroup.run`) build them."""
    out = RunResult.from_passes(
        passes,
        run_dir=str(run_dir),
        storage=job_store,
        job_id=job_id,
        status="succeeded",
        num_workers=num_workers,
        wall_seconds=wall_seconds,
        wall_split=wall_split,
        warm=warm,
    )
    return write_results(run_dir, job_store, out)


def write_results(run_dir: Path, job_store: str, out: RunResult) -> RunResult:
    """``results.json`` in the run directory (and the job's store); returns ``out``."""
    text = json.dumps(out.model_dump(mode="json"), indent=2)
    (run_dir / RESULTS_FILE).write_text(text)
    if job_store != str(run_dir):
        storage.write_text(storage.join(job_store, RESULTS_FILE), text)
    return out


def _root_cause(e: BaseException) -> str:
    seen = e
    while seen.__cause__ is not None:
        seen = seen.__cause__
    if isinstance(seen, RectrainError):  # ours (e.g. "diverged at step N"): its message says it all
        return str(getattr(seen, "message", seen))
    return f"{type(seen).__name__}: {seen}"
