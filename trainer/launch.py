"""The driver: run a job spec on Ray Train and write the run's results.

``run_job`` starts a local Ray when neither ``ray_address`` nor ``RAY_ADDRESS`` is
set (the embedded default), else joins that cluster; then a ``TorchTrainer`` runs
:func:`trainer.loop.train_worker` on ``scaling.num_workers`` workers with gloo on
CPU or NCCL on GPU, restarting from the last checkpoint up to
``training.max_failures`` times.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from trainer.errors import RectrainError
from trainer.report import summarize_passes  # noqa: F401  (results.json's summary; re-exported)
from trainer.spec import JobSpec, spec_to_yaml

RESULTS_FILE = "results.json"


def default_run_dir(root: str | Path = "runs") -> Path:
    return Path(root) / time.strftime("run-%Y%m%d-%H%M%S")


def _ensure_ray(spec: JobSpec, ray_address: str | None) -> bool:
    """Connect to Ray; return True when the run is local (this machine's files are
    the workers' files, so the driver can follow rank 0's events.jsonl itself)."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address.startswith(("127.", "localhost"))
    address = ray_address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True)
        return address.startswith(("127.", "localhost"))
    need = spec.scaling.num_workers * spec.scaling.cpus_per_worker
    # Worker logs stay in Ray's log files; the driver prints rank 0's events instead.
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, int(need + 0.999)),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=True,
        logging_level="ERROR",
    )
    return True


class _EventFollower(threading.Thread):
    """Follows run_dir/events.jsonl: prints windowed NE and pass lines, and a progress bar."""

    def __init__(self, path: Path, total_steps: int, progress: bool) -> None:
        super().__init__(name="rectrain-follow", daemon=True)
        self.path, self.total, self.progress = path, total_steps, progress
        self.stop = threading.Event()

    def run(self) -> None:
        from tqdm import tqdm

        from trainer.metrics.events import EventType, format_event

        bar = tqdm(total=self.total, unit="step", leave=False, dynamic_ncols=True) if self.progress else None
        pos = 0
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
                        text = format_event(ev)
                        if text is not None:
                            (bar.write if bar is not None else print)(text)
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
) -> dict[str, Any]:
    """Train ``spec`` to the end; return (and write to run_dir/results.json) the results."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainer.loop import train_worker

    spec.check_capacity()
    run_dir = Path(run_dir or default_run_dir()).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.yaml").write_text(spec_to_yaml(spec))
    # ray.init installs its own SIGTERM handler; keep ours (a cancel aborts the run cleanly)
    prev_sigterm = signal.getsignal(signal.SIGTERM)
    local = _ensure_ray(spec, ray_address)
    if threading.current_thread() is threading.main_thread() and prev_sigterm is not None:
        signal.signal(signal.SIGTERM, prev_sigterm)

    scaling = spec.scaling
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "run_dir": str(run_dir),
            "job_id": job_id,
            "redis_url": redis_url,
            "stdout_sink": not local,
        },
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=RunConfig(
            name="train",
            storage_path=os.environ.get("RECTRAIN_STORAGE_PATH") or str(run_dir / "ray"),
            failure_config=FailureConfig(max_failures=spec.training.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    t0 = time.time()
    follower = None
    if local:
        follower = _EventFollower(run_dir / "events.jsonl", total_steps=0, progress=progress)
        follower.start()
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps worker errors; keep the root cause readable
        raise RectrainError(f"training failed: {_root_cause(e)}") from e
    finally:
        if follower is not None:
            follower.stop.set()
            follower.join(5)
    passes = (result.metrics or {}).get("passes", [])
    out = {
        "run_dir": str(run_dir),
        "job_id": job_id,
        "status": "succeeded",
        "num_workers": scaling.num_workers,
        "wall_seconds": time.time() - t0,
        **summarize_passes(passes),
    }
    (run_dir / RESULTS_FILE).write_text(json.dumps(out, indent=2))
    return out


def _root_cause(e: BaseException) -> str:
    seen = e
    while seen.__cause__ is not None:
        seen = seen.__cause__
    return f"{type(seen).__name__}: {seen}"
