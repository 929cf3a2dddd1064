"""Warm execution: a long-lived worker group on Ray trains run after run.

A *warm worker group* is ``num_workers`` Ray actors (:class:`trainer.warm_worker.WarmWorker`), one per
rank, placed together by a placement group (PACK, like Ray Train's). They import torch,
TorchRec and FBGEMM once, form one torch.distributed process group once (gloo on CPU;
NCCL for CUDA tensors beside gloo on GPU), and keep each rank's built dataset per data
spec (:meth:`RankData.cache_key`: the data does not depend on ``training.seed``, only
the row order does, which is drawn per pass). Each run then gets everything else fresh:
a new :class:`trainer.loop.Trainer` (model, optimizers, regularizer state, metric
modules), torch's RNG seeded from ``training.seed`` as in a one-run worker, Python's and
NumPy's global RNG reset, and torch.compile's caches cleared when the run compiles. The
per-run body is :func:`trainer.worker.run_worker`, the same as a Ray Train worker's
(:func:`trainer.worker.train_worker`), and a run writes its run directory
(``spec.yaml``, ``events.jsonl``, ``results.json``, ``pids/``) as ``rectrain run`` does.

Why actors and not a Ray Train run whose workers loop over runs: the driver decides
which run goes next (the study's order, or the service's queue between two runs), a
run that raises or diverges is a result of that run and not a failure of a Ray Train
run (whose controller would tear the group down and restart it), and a run's
checkpoint is the run's own (Ray Train keeps one run's checkpoints under one storage
path). A worker that dies is replaced with the whole group (the process group cannot
take a new member) and the run it held is retried once from its start.

Checkpoints (``training.pass_checkpoints``, default "selected" here): only a pass that
can be the validation-selected one is saved, to ``<run>/checkpoints/pass_NNNN`` (the
previous one removed), so a run can be exported or continued from its selected pass;
"every" keeps every pass end.

Here the driver's side (:class:`WarmGroup`, :class:`WarmPool`); the workers' in
:mod:`trainer.warm_worker`.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import RectrainError
from trainer.report import wall_split
from trainer.results import EVENTS_FILE, RunResult, WarmInfo
from trainer.spec import JobSpec
from trainer.warm_worker import WarmWorker

# after one rank failed, how long the others may take to fail too before the group is
# taken for stuck (a rank blocked in a collective) and replaced
_PEER_FAIL_WAIT_S = 60.0
# how often a run's waits on Ray look at its cancel flag
_CANCEL_POLL_S = 0.25


@dataclass(frozen=True)
class Shape:
    """What a worker group is made of: runs of one shape can share it."""

    num_workers: int
    cpus_per_worker: float
    use_gpu: bool

    @classmethod
    def of(cls, spec: JobSpec) -> Shape:
        sc = spec.scaling
        return cls(sc.num_workers, sc.cpus_per_worker, sc.use_gpu)


class WorkerDied(RectrainError):
    """A worker process of the group died (its run is retried once on a new group)."""


class WarmGroup:
    """The driver's handle on one warm worker group of ``shape``.

    ``run(spec, run_dir)`` trains one run on it and returns (and writes as
    ``results.json``) the same results as :func:`trainer.launch.run_job`; failures
    raise :class:`RectrainError` ("training failed: ...") as it does, and the group
    stays usable. The group starts on the first run; :meth:`close` ends it."""

    def __init__(self, shape: Shape, *, stdout_sink: bool = False) -> None:
        self.shape = shape
        self.stdout_sink = stdout_sink
        self.actors: list[Any] = []
        self.pids: list[int] = []
        self._pg: Any = None
        self._pending_startup_s = 0.0  # the group's start-up, charged to its next run
        self.startup_s = 0.0
        self.runs = 0
        self.restarts = 0
        # the run in progress's cancel flag (run()'s ``cancel``, else one of its own)
        self._cancel = threading.Event()

    # ---- life cycle

    def cancel(self) -> None:
        """Stop the run in progress (from another thread): it raises "cancelled" within
        :data:`_CANCEL_POLL_S`, having ended the workers (the group starts again for a
        later run). The run's own thread ends them: Ray calls on this group stay on one
        thread. (Ending them from the caller's thread raced with :meth:`start`: a
        placement group removed between its ``ready()`` and the actors' creation left
        actors that Ray never schedules, and the start waited for them for ever.)"""
        self._cancel.set()

    def _end_if_cancelled(self, cancel: threading.Event) -> None:
        """Once ``cancel`` is set: end the workers (on this, the run's thread) and raise "cancelled"."""
        if cancel.is_set():
            self.close()
            raise RectrainError("cancelled")

    def _wait(self, refs: list[Any], cancel: threading.Event) -> list[Any]:
        """``ray.get(refs)``, given up (the group closed, "cancelled" raised) as soon as
        ``cancel`` is set: a placement group may wait for resources indefinitely (a
        cluster scaling up, or busy)."""
        import ray

        pending = list(refs)
        while pending:
            self._end_if_cancelled(cancel)
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=_CANCEL_POLL_S)
            ray.get(ready)  # one that failed raises now, not once all are done
        return list(ray.get(refs))

    def start(self, cancel: threading.Event | None = None) -> float:
        """Place and start the workers and form their process group; the seconds it took.
        ``cancel``: set from another thread, the start is given up ("cancelled" raised)."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cancel = cancel or threading.Event()
        t0 = time.perf_counter()
        sh = self.shape
        bundle: dict[str, float] = {"CPU": sh.cpus_per_worker}
        if sh.use_gpu:
            bundle["GPU"] = 1
        self._pg = placement_group([dict(bundle) for _ in range(sh.num_workers)], strategy="PACK")
        self._wait([self._pg.ready()], cancel)
        actor_cls = ray.remote(WarmWorker)
        self.actors = [
            actor_cls.options(
                num_cpus=sh.cpus_per_worker,
                num_gpus=1 if sh.use_gpu else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._pg, placement_group_bundle_index=i
                ),
                max_restarts=0,
                max_concurrency=2,  # run() and, beside it, rss()
            ).remote()
            for i in range(sh.num_workers)
        ]
        try:
            infos = self._wait([a.address.remote() for a in self.actors], cancel)
            # ranks grouped by node in order of first appearance, as Ray Train orders them
            nodes = list(dict.fromkeys(i[0] for i in infos))
            order = sorted(range(len(infos)), key=lambda i: nodes.index(infos[i][0]))
            self.actors = [self.actors[i] for i in order]
            infos = [infos[i] for i in order]
            self.pids = [i[3] for i in infos]
            master = f"{infos[0][1]}:{infos[0][2]}"
            per_node = {n: [i for i in infos if i[0] == n] for n in nodes}
            calls = []
            for rank, (actor, info) in enumerate(zip(self.actors, infos, strict=True)):
                local = per_node[info[0]]
                calls.append(
                    actor.setup.remote(
                        rank,
                        len(infos),
                        local.index(info),
                        len(local),
                        nodes.index(info[0]),
                        master,
                        sh.use_gpu,
                    )
                )
            self._wait(calls, cancel)
        except Exception:
            self.close()
            raise
        self.startup_s = time.perf_counter() - t0
        self._pending_startup_s += self.startup_s
        return self.startup_s

    def close(self) -> None:
        """End the workers and free their resources."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        self.actors, self.pids = [], []
        if self._pg is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self._pg)
            self._pg = None

    def rss(self) -> list[int]:
        """Each worker's resident set size now (bytes)."""
        import ray

        return list(ray.get([a.rss.remote() for a in self.actors]))

    # ---- runs

    def _call_run(self, job: dict[str, Any], cancel: threading.Event) -> list[dict[str, Any]]:
        import ray
        from ray.exceptions import RayActorError

        refs = [a.run.remote(job) for a in self.actors]
        pending = list(refs)
        deadline: float | None = None
        done_out: dict[Any, dict[str, Any]] = {}
        while pending:
            self._end_if_cancelled(cancel)
            left = _CANCEL_POLL_S if deadline is None else min(_CANCEL_POLL_S, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(left, 0.0))
            if not ready and (deadline is None or time.monotonic() < deadline):
                continue
            if not ready:  # the other ranks never finished: stuck in a collective
                self.close()
                raise RectrainError(
                    "training failed: "
                    + next(o["error"] for o in done_out.values() if not o["ok"])
                    + " (on some workers only; the worker group was replaced)"
                )
            try:
                out = ray.get(ready[0])
            except RayActorError as e:
                self.close()
                raise WorkerDied(f"a worker process died: {e}") from e
            done_out[ready[0]] = out
            if not out["ok"] and deadline is None:
                deadline = time.monotonic() + _PEER_FAIL_WAIT_S
        return [done_out[r] for r in refs]

    def run(
        self,
        spec: JobSpec,
        run_dir: str | Path | None = None,
        *,
        job_id: str | None = None,
        redis_url: str | None = None,
        storage_uri: str | None = None,
        waiting_s: float = 0.0,
        dispatched_at: float | None = None,
        cancel: threading.Event | None = None,
    ) -> RunResult:
        """Train ``spec`` on this group (started if needed) and return its results.
        ``waiting_s``: how long it was queued; ``dispatched_at``: when the service
        dispatched it (the first mark of its "startup" event); ``cancel``: the run's
        cancel flag, which :meth:`cancel` sets (the caller's own: a cancel set before the
        run begins is not lost) — once set, the run raises "cancelled"."""
        from trainer.launch import prepare_run, publish_spec, record_results

        if Shape.of(spec) != self.shape:
            raise ValueError(f"spec of shape {Shape.of(spec)} on a worker group of shape {self.shape}")
        self._cancel = cancel = cancel if cancel is not None else threading.Event()
        if cancel.is_set():  # nothing begun: the group (idle or not started) stays as it is
            raise RectrainError("cancelled")
        spec, run_dir, root, job_store = prepare_run(spec, run_dir, job_id, storage_uri)
        publish_spec(spec, run_dir, root, job_store)
        job = {
            "spec": spec.model_dump(mode="json"),
            "run_dir": str(run_dir),
            "store": job_store,
            "job_id": job_id,
            "redis_url": redis_url,
            "stdout_sink": self.stdout_sink,
            "init_from_checked": True,  # by prepare_run, just now
            "marks": {**({"dispatched": dispatched_at} if dispatched_at else {}), "group_run": time.time()},
        }
        t0 = time.perf_counter()
        started = 0.0  # group start-ups inside this call: in _pending_startup_s, not in the wall
        outs: list[dict[str, Any]] | None = None
        for attempt in (1, 2):
            if not self.actors:
                started += self.start(cancel)
            try:
                outs = self._call_run(job, cancel)
                break
            except WorkerDied:
                if cancel.is_set():
                    raise RectrainError("cancelled") from None
                self.restarts += 1
                if attempt == 2:
                    raise
                # the run starts again from its beginning on a new group: its events and
                # checkpoints of the first attempt go
                for name in (EVENTS_FILE, "checkpoints"):
                    p = run_dir / name
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    elif p.exists():
                        p.unlink()
        assert outs is not None
        wall = time.perf_counter() - t0 - started
        startup, self._pending_startup_s = self._pending_startup_s, 0.0
        self.runs += 1
        first = outs[0]
        if not first["ok"]:
            bad = next(o for o in outs if not o["ok"])
            raise RectrainError(f"training failed: {bad['error']}")
        split = wall_split(wall, first["timings"], waiting_s=waiting_s, startup_s=startup)
        return record_results(
            run_dir,
            job_store,
            first["passes"],
            job_id=job_id,
            num_workers=self.shape.num_workers,
            wall_seconds=split["wall_s"],
            wall_split=split,
            warm=WarmInfo(
                group_run=self.runs,
                worker_rss_bytes=[o["rss_bytes"] for o in outs],
                restarts=self.restarts,
            ),
        )


class WarmPool:
    """Warm worker groups by shape, for runs executed one after another (``rectrain
    study --local``): one group per shape, kept until :meth:`close`."""

    def __init__(self, *, stdout_sink: bool = False) -> None:
        self.groups: dict[Shape, WarmGroup] = {}
        self.stdout_sink = stdout_sink

    def group(self, spec: JobSpec) -> WarmGroup:
        shape = Shape.of(spec)
        g = self.groups.get(shape)
        if g is None:
            g = self.groups[shape] = WarmGroup(shape, stdout_sink=self.stdout_sink)
        return g

    def run(self, spec: JobSpec, run_dir: str | Path | None = None, **kw: Any) -> RunResult:
        return self.group(spec).run(spec, run_dir, **kw)

    def close(self) -> None:
        for g in self.groups.values():
            g.close()
        self.groups.clear()

    def __enter__(self) -> WarmPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(spec: JobSpec, ray_address: str | None = None) -> bool:
    """Connect this driver to Ray as :func:`trainer.launch.run_job` does (a local Ray of
    this machine's CPUs unless ``ray_address``/``RAY_ADDRESS``); True when local."""
    import sys

    from trainer.launch import check_local_fit, connect_ray, env_ray_address

    ray_mod = sys.modules.get("ray")
    joining = ray_address or env_ray_address() or (ray_mod is not None and ray_mod.is_initialized())
    if not joining:
        check_local_fit(spec)
    return connect_ray(spec, ray_address)
