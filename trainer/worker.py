"""A worker's entry: one run of a :class:`trainer.loop.Trainer` in this process.

:func:`train_worker` is Ray Train's entry point (one run, then the worker ends);
:func:`run_worker` is the body it shares with a warm worker that trains run after run
(:mod:`trainer.warm_worker`): the pid files and the worker's environment report, the
torch threads, rank 0's metrics sink, a fresh Trainer and its passes. The run's
start-up marks (:data:`STARTUP_LABELS`) become its "startup" event
(:func:`startup_event`) at the first step.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.session import RaySession, Session
from trainer.spec import JobSpec

if TYPE_CHECKING:
    from trainer.data.dataset import RankData
    from trainer.loop import Trainer

# the start-up marks (wall-clock times, in order): each names the span that ends at it
STARTUP_LABELS = {
    "dispatched": "dispatch",
    "process_start": "driver process start",
    "run_job": "driver imports",
    "ray_imported": "Ray Train imports",
    "ray_connected": "Ray connect",
    "fit": "trainer set-up",
    # Ray Train: its controller, the worker processes, their imports, the process group;
    # a warm group: the call (and the group's own start-up when it had none yet)
    "worker": "to the worker",
    "group_run": "warm group call",
    "trainer": "worker set-up",
    "data": "dataset",
    "model": "model, planner, sharding, optimizers",
    "first_step": "first step",
}


def startup_event(marks: dict[str, float]) -> dict[str, Any]:
    """The "startup" event's payload at the run's first step (``marks`` with
    "first_step"): where the time from the first mark (the dispatch, when the service
    gave it) to the first step went."""
    names = sorted(marks, key=lambda k: marks[k])  # clocks of one machine: in order
    parts = {b: max(marks[b] - marks[a], 0.0) for a, b in zip(names, names[1:], strict=False)}
    total = marks["first_step"] - marks[names[0]]
    text = ", ".join(f"{STARTUP_LABELS.get(k, k)} {v:.2f}" for k, v in parts.items())
    return {
        "phase": "startup",
        "message": f"first step {total:.1f} s after {STARTUP_LABELS.get(names[0], names[0])}: {text}",
        "startup_s": parts,
        "startup_from": names[0],
        "startup_total_s": total,
    }


def worker_threads(spec: JobSpec) -> int:
    """Intra-op threads of a worker: its reserved CPUs (``scaling.cpus_per_worker``,
    rounded down, at least 1), so workers sharing a node do not oversubscribe it."""
    return max(1, int(spec.scaling.cpus_per_worker))


def rss_bytes() -> int:
    """This process's resident set size now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (runs on every worker): one run, then the worker ends."""
    worker_start = time.time()
    spec = JobSpec.model_validate(config["spec"])
    run_worker(
        spec,
        RaySession(spec.scaling.use_gpu),
        Path(config["run_dir"]),
        job_id=config.get("job_id"),
        redis_url=config.get("redis_url"),
        stdout_sink=config.get("stdout_sink", True),
        job_store=config.get("job_store"),
        pass_checkpoints=spec.training.pass_checkpoints or "every",
        marks={**config.get("startup_marks", {}), "worker": worker_start},
        init_from_checked=config.get("init_from_checked", False),
    )


def _worker_record(spec: JobSpec, session: Session, run_dir: Path) -> None:
    """This worker's pid files under ``run_dir/pids`` and its torch threads
    (:func:`worker_threads`), with a record of what it ran with and its RSS before the
    Trainer existed (the interpreter, torch, Ray): ``rectrain bench`` subtracts it from
    the worker's sampled peak."""
    node_id = getattr(session, "node_id", None)
    pid_dir = run_dir / "pids"
    pid_dir.mkdir(parents=True, exist_ok=True)
    (pid_dir / f"rank_{session.rank}.pid").write_text(str(os.getpid()))
    if node_id is not None:
        (pid_dir / f"rank_{session.rank}.node").write_text(node_id)
    threads_before = torch.get_num_threads()
    threads = worker_threads(spec)
    if threads != threads_before:
        torch.set_num_threads(threads)
    info = {
        "pid": os.getpid(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads_at_start": threads_before,
        "torch_threads": torch.get_num_threads(),
        "rss_before_trainer_bytes": rss_bytes(),
    }
    (pid_dir / f"rank_{session.rank}.json").write_text(json.dumps(info))


def run_worker(
    spec: JobSpec,
    session: Session,
    run_dir: Path,
    *,
    job_id: str | None = None,
    redis_url: str | None = None,
    stdout_sink: bool = True,
    job_store: str | None = None,
    data: RankData | None = None,
    pass_checkpoints: str = "every",
    marks: dict[str, float] | None = None,
    init_from_checked: bool = False,
) -> Trainer:
    """One run on this worker, the body shared by a one-run Ray Train worker
    (:func:`train_worker`) and a warm worker that trains run after run
    (:mod:`trainer.warm_worker`): the pid files, the torch threads, rank 0's metrics
    sink, a fresh :class:`Trainer` and its passes. ``marks``: the start-up's earlier
    wall-clock marks (names of :data:`STARTUP_LABELS`); ``job_store``: the job's storage
    location (rank 0 copies its TensorBoard files there); ``init_from_checked``: see
    :class:`Trainer`. Returns the finished Trainer."""
    from trainer.loop import Trainer
    from trainer.metrics.events import make_sink

    _worker_record(spec, session, run_dir)
    sink = None
    if session.rank == 0:
        sink = make_sink(
            run_dir, stdout=stdout_sink, redis_url=redis_url, job_id=job_id, spec=spec, job_store=job_store
        )
    try:
        trainer = Trainer(
            spec,
            session,
            run_dir,
            sink=sink,
            data=data,
            pass_checkpoints=pass_checkpoints,
            init_from_checked=init_from_checked,
        )
        trainer.startup_marks = {**(marks or {}), **trainer.startup_marks}
        trainer.run()
    finally:
        if sink is not None:
            sink.close()
    return trainer
