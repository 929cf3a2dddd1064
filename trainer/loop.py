"""The per-worker train loop: passes over the training days, evaluation after each.

The same :class:`Trainer` runs inside Ray Train workers (:class:`RaySession`) and
in a plain single process (:class:`LocalSession`, for benchmarks and unit tests);
only the session differs (rank, checkpoint I/O, ``report``).

NE is streamed by rank 0 straight to the metrics sink. ``ray.train.report`` is a
barrier costing ~2 s, so it is called only with checkpoints (end of every pass,
and every ``training.checkpoint_every_steps`` if set).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer import pipeline, references
from trainer.checkpoint import (
    load_checkpoint,
    load_weights,
    reseed,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trainer.collectives import Collectives
from trainer.data.dataset import STRATA, RankData, prefetch
from trainer.errors import DivergedError
from trainer.lifecycle import MID_PASS_SCORE, keep_score, model_signature
from trainer.metrics import ne
from trainer.metrics.auc import ExactAUC
from trainer.metrics.events import EventType, MetricsSink, Phase, make_event
from trainer.model.dlrm import DLRM, batch_norm_statistics
from trainer.model.embedding_init import init_embedding_tables
from trainer.model.sharding import dense_named_parameters, make_dense_optimizer, shard_model
from trainer.regularizers.regset import RegularizerSet
from trainer.regularizers.schedule import reset_optimizer_state
from trainer.results import PassResult
from trainer.spec import JobSpec


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def checkpoint_dir(self) -> str | None: ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...


class RaySession:
    """Inside a Ray Train worker: rank, device and checkpoints from ``ray.train``."""

    def __init__(self, use_gpu: bool) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
        if self.device.type == "cuda":
            # explicit: NCCL, the CUDA caching allocator and FBGEMM's kernels use the
            # current device, which must be this worker's GPU (local rank), not GPU 0
            torch.cuda.set_device(self.device)
        self._ckpt = ray.train.get_checkpoint()
        self.node_id = ray.get_runtime_context().get_node_id()
        self._ckpt_dir_ctx: contextlib.AbstractContextManager[str] | None = None

    def checkpoint_dir(self) -> str | None:
        if self._ckpt is None:
            return None
        self._ckpt_dir_ctx = self._ckpt.as_directory()
        return self._ckpt_dir_ctx.__enter__()

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)


class LocalSession:
    """One process, world size 1: checkpoints go to ``run_dir/checkpoints``."""

    def __init__(self, run_dir: str | Path, device: torch.device | None = None) -> None:
        self.rank, self.world_size = 0, 1
        self.device = device or torch.device("cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dir = Path(run_dir) / "checkpoints"
        self.reports: list[dict[str, Any]] = []
        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(local_backend(self.device), rank=0, world_size=1)

    def checkpoint_dir(self) -> str | None:
        latest = self.dir / "latest"
        return str(latest) if latest.exists() else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir:
            latest = self.dir / "latest"
            if latest.exists():
                shutil.rmtree(latest)
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(checkpoint_dir, latest)


def local_backend(device: torch.device) -> str:
    """The in-process group's backend: on CUDA, NCCL for device tensors (as Ray Train's
    GPU workers use) with gloo beside it for host tensors; gloo alone on CPU."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PASS_CHECKPOINTS = ("every", "selected")

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


def keeps_pass_checkpoint(policy: str, passes: list[dict[str, Any]], spec: JobSpec) -> bool:
    """Whether the pass that just ended (``passes[-1]``) is checkpointed.

    "every": always. "selected": only a pass that may turn out to be the run's selected
    pass (trainer/report.py): with validation data, a pass whose validation NE is lower
    than every earlier pass's (the earliest wins ties, so an equal later pass cannot
    be selected); without, the last pass. Read on rank 0, which holds the metrics'
    values (:meth:`Trainer._keeps_pass_checkpoint` tells the other ranks)."""
    if policy == "every":
        return True
    p = passes[-1]
    if not spec.data.has_validation:
        return p["pass"] == spec.training.num_passes - 1
    v = p.get("val_ne")
    if v is None:
        return False
    earlier = [q["val_ne"] for q in passes[:-1] if q.get("val_ne") is not None]
    return all(v < e for e in earlier)


class Trainer:
    """Builds data, model, optimizers and metrics for one worker and runs the passes."""

    def __init__(
        self,
        spec: JobSpec,
        session: Session,
        run_dir: str | Path,
        sink: MetricsSink | None = None,
        *,
        data: RankData | None = None,
        pass_checkpoints: str = "every",
        init_from_checked: bool = False,
    ) -> None:
        """``data``: this rank's data already built for ``spec`` (a warm worker's cache,
        :meth:`RankData.for_spec`); built here when None. ``pass_checkpoints``: "every"
        pass end is checkpointed (and reported), or only a pass that may be the
        "selected" one (see :func:`keeps_pass_checkpoint`). ``init_from_checked``: the
        driver resolved and checked ``training.init_from`` just before this run's workers
        started (:func:`trainer.launch.prepare_run`): it is used as it is, not checked again."""
        if pass_checkpoints not in PASS_CHECKPOINTS:
            raise ValueError(f"pass_checkpoints: {pass_checkpoints!r} is not one of {PASS_CHECKPOINTS}")
        t0 = time.perf_counter()
        # wall-clock marks of the run's start-up, in order (the "startup" event at its
        # first step); whoever started the worker adds its own before these (run_worker)
        self.startup_marks: dict[str, float] = {"trainer": time.time()}
        self.spec = spec
        self.session = session
        self.run_dir = Path(run_dir)
        self.sink = sink if session.rank == 0 else None
        self.device = session.device
        self.pass_checkpoints = pass_checkpoints
        self.init_from_checked = init_from_checked
        self.collectives = Collectives(self.device)  # every collective of the loop goes through it
        self._pin = self.device.type == "cuda"  # page-locked host batches: async H2D copies
        torch.manual_seed(spec.training.seed)

        self.data = data if data is not None else RankData(spec, session.rank, session.world_size)
        t_data = time.perf_counter()
        self.startup_marks["data"] = time.time()
        self.regs = RegularizerSet(spec)
        model = DLRM(
            spec,
            dense_dropout=self.regs.dense_dropout,
            dense_device=self.device,
            pooled_train_scale=self.regs.pooled_train_scale(spec.data.sparse_feature_names()),
        )
        model.init_output_bias(float(self.data.train.label.mean()))
        if spec.training.compile:
            model.compile_dense()  # the dense part only; DMP shards the EBC eagerly
        self.dmp = shard_model(model, spec, self.device, self.regs.fused_params())
        init_embedding_tables(self.dmp, spec.training.seed)  # per (seed, table): same on any world size
        self.regs.attach(self.dmp)
        named = dense_named_parameters(self.dmp)
        self.dense_params = [p for _, p in named]
        self.dense_opt = make_dense_optimizer(self.regs.dense_param_groups(named), spec)
        self.global_step = 0
        self.passes: list[dict[str, Any]] = []
        # oracle NE per split: it does not depend on the model, so it is computed once
        self._oracle: dict[str, float | None] = {}
        self._bad_step: torch.Tensor | None = None  # first step with a non-finite loss
        self._bad_loss: torch.Tensor | None = None
        self._resumed_metrics: dict[str, Any] | None = None  # train-metric states of a pass resumed mid-way
        self.last_pass_cpu_seconds = 0.0  # this rank's training CPU time in the last pass
        self.startup_marks["model"] = time.time()
        self._first_step_done = False
        # where this rank's wall time went (seconds): the run's wall split (trainer/report.py)
        self.timings: dict[str, float] = {
            "data_s": t_data - t0,
            "setup_s": time.perf_counter() - t_data,  # model, planner, sharding, optimizers
            "training_s": 0.0,
            "evaluation_s": 0.0,
            "checkpoint_s": 0.0,
        }

    # ------------------------------------------------------------------ helpers

    def emit(self, type_: EventType, pass_: int, **payload: Any) -> None:
        if self.sink is not None:
            self.sink.emit(make_event(type_, self.global_step, pass_, **payload))

    def _train_metric_module(self):
        s = self.spec
        return ne.make_metric_module(
            window_size=s.metrics.window_size,
            batch_size=s.data.batch_size,
            world_size=self.session.world_size,
            rank=self.session.rank,
            device=self.device,
        )

    def train_step(self, batch) -> torch.Tensor:
        """One step: forward, weighted BCE, backward (fused sparse update), dense step."""
        batch = self.regs.transform(batch, step=self.global_step)
        loss, logits = self.forward_loss(batch)
        self.dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.after_backward()
        self._nonfinite_loss(loss)
        return logits

    def forward_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of a batch already transformed: the weighted BCE plus the
        penalty regularizers (max_entropy). Shared by :meth:`train_step` and the
        sparse-dist pipeline (trainer/pipeline.py)."""
        logits = self.dmp(batch.dense, batch.sparse)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels, weight=batch.weights)
        return self.regs.add_penalty(loss), logits

    def after_backward(self) -> None:
        """The rest of a step once backward has run (the fused sparse update with it):
        dense gradient clipping, the dense step, the post-step regularizers."""
        clip = self.spec.training.dense_grad_clip_norm
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(self.dense_params, clip)
        self.dense_opt.step()
        self.regs.after_step(self.dmp)

    # ---- divergence (training.on_divergence) -------------------------------------

    def _nonfinite_loss(self, loss: torch.Tensor) -> None:
        """Remember (without a device sync) the first step whose loss was not finite."""
        loss = loss.detach()
        if self._bad_step is None:
            self._bad_step = torch.zeros((), dtype=torch.long, device=loss.device)
            self._bad_loss = torch.zeros((), dtype=loss.dtype, device=loss.device)
        first = ~torch.isfinite(loss) & (self._bad_step == 0)
        self._bad_step = torch.where(first, self.global_step + 1, self._bad_step)
        assert self._bad_loss is not None  # set together with _bad_step
        self._bad_loss = torch.where(first, loss, self._bad_loss)

    def check_divergence(
        self, p: int, ne_value: float | None = 0.0, cpu_seconds: float | None = None
    ) -> float | None:
        """At a report point (all ranks together): a non-finite loss on any rank since
        the last check, or a non-finite NE (``None``), stops the run with
        "diverged at step N (loss = nan)" unless ``training.on_divergence`` is continue.

        ``cpu_seconds`` (end of a pass: this rank's training CPU time) rides on the same
        all-gather (no extra sync); the sum over the ranks is returned (None when not
        given)."""
        flag = torch.zeros(1, dtype=torch.float64)
        local_bad = self._bad_step is not None and int(self._bad_step) > 0
        if self._bad_step is not None and local_bad:
            flag[0] = float(self._bad_step)
        cpu_total = cpu_seconds
        if dist.is_initialized() and self.session.world_size > 1:
            mine = torch.tensor([flag[0].item(), cpu_seconds or 0.0], dtype=torch.float64)
            rows = torch.stack([t.cpu() for t in self.collectives.all_gather(mine)])
            flag = rows[:, 0].max().reshape(1)
            if cpu_seconds is not None:
                cpu_total = float(rows[:, 1].sum())
        self._raise_if_diverged(p, flag, local_bad, ne_value)
        return cpu_total

    def _raise_if_diverged(self, p: int, flag: torch.Tensor, local_bad: bool, ne_value: float | None) -> None:
        ne_bad = ne_value is None or not math.isfinite(ne_value)
        if flag[0] == 0 and not ne_bad:
            return
        if flag[0] > 0:
            loss = float(self._bad_loss) if local_bad and self._bad_loss is not None else float("nan")
            msg = f"diverged at step {int(flag[0])} (loss = {loss})"
            if self._bad_step is not None:
                self._bad_step.zero_()
        else:
            msg = f"diverged at step {self.global_step} (NE = nan)"
        if self.spec.training.on_divergence == "continue":
            self.emit(EventType.LIFECYCLE, p, phase="diverged", message=f"{msg}; continuing (on_divergence)")
            return
        self.emit(EventType.LIFECYCLE, p, phase=Phase.FAILED.value, message=msg)
        raise DivergedError(f"{msg}; lower the learning rates or set training.on_divergence: continue")

    def checkpoint(
        self, pass_idx: int, step_in_pass: int, metrics: dict[str, Any], train_metrics=None
    ) -> None:
        """Collective: a DCP checkpoint of everything a resume needs to continue exactly
        (mid-pass: with the pass's train-metric states), handed to the session."""
        rank_state = {
            "progress": {
                "pass": pass_idx,
                "step_in_pass": step_in_pass,
                "global_step": self.global_step,
                "passes": self.passes,
            },
            "rng": rng_state(self.device),
            "train_metrics": ne.get_state(train_metrics) if train_metrics is not None else None,
        }
        progress = {"pass": pass_idx, "step_in_pass": step_in_pass, "global_step": self.global_step}
        meta = {"progress": progress, "model": model_signature(self.spec)}
        # which checkpoints Ray Train keeps (trainer/lifecycle.py): the latest, and the pass
        # ends with the best score (lowest validation NE; without validation, the last)
        score = MID_PASS_SCORE
        if step_in_pass == 0 and pass_idx > 0 and self.passes:
            score = keep_score(self.passes[-1].get("val_ne"), pass_idx - 1, self.spec.data.has_validation)
        with tempfile.TemporaryDirectory(prefix="rectrain-ckpt-") as d:
            save_checkpoint(
                d,
                rank=self.session.rank,
                world_size=self.session.world_size,
                dmp=self.dmp,
                dense_opt=self.dense_opt,
                rank_state=rank_state,
                meta=meta,
                regs=self.regs.checkpoint_state(),
            )
            self.session.report(
                {
                    **metrics,
                    "global_step": self.global_step,
                    "passes": self.passes,
                    "keep_score": score,
                    "timings": self.timings,
                },
                d,
            )

    def _keeps_pass_checkpoint(self) -> bool:
        """Collective: whether the pass that just ended is checkpointed. Rank 0 decides
        (the metrics' values, validation NE among them, are computed on rank 0 only) and
        tells the others, so that all ranks enter the checkpoint's collectives or none."""
        keep = keeps_pass_checkpoint(self.pass_checkpoints, self.passes, self.spec)
        if self.pass_checkpoints == "every" or self.session.world_size == 1:
            return keep
        flag = self.collectives.broadcast(torch.tensor([1.0 if keep else 0.0]), src=0)
        return bool(flag.cpu()[0] > 0)

    def _emit_startup(self, p: int) -> None:
        """The "startup" event at the run's first step: where the time from the first
        mark (the dispatch, when the service gave it) to the first step went."""
        marks = {**self.startup_marks, "first_step": time.time()}
        names = sorted(marks, key=lambda k: marks[k])  # clocks of one machine: in order
        parts = {b: max(marks[b] - marks[a], 0.0) for a, b in zip(names, names[1:], strict=False)}
        total = marks["first_step"] - marks[names[0]]
        text = ", ".join(f"{STARTUP_LABELS.get(k, k)} {v:.2f}" for k, v in parts.items())
        self.emit(
            EventType.LIFECYCLE,
            p,
            phase="startup",
            message=f"first step {total:.1f} s after {STARTUP_LABELS.get(names[0], names[0])}: {text}",
            startup_s=parts,
            startup_from=names[0],
            startup_total_s=total,
        )

    def _plan(self) -> dict[str, int]:
        steps = self.data.steps_per_pass
        return {
            "steps_per_pass": steps,
            "num_passes": self.spec.training.num_passes,
            "total_steps": steps * self.spec.training.num_passes,
            "num_workers": self.session.world_size,
        }

    def _resume(self) -> tuple[int, int]:
        ckpt = self.session.checkpoint_dir()
        if ckpt is None:
            self._warm_start()
            self.emit(
                EventType.LIFECYCLE,
                -1,
                phase=Phase.STARTED.value,
                message=f"{self.session.world_size} worker(s), {self.data.steps_per_pass} steps/pass",
                **self._plan(),
            )
            return 0, 0
        regs = self.regs.checkpoint_state()
        st, own = load_checkpoint(
            ckpt,
            rank=self.session.rank,
            world_size=self.session.world_size,
            dmp=self.dmp,
            dense_opt=self.dense_opt,
            regs=regs,
        )
        self.regs.state_loaded(regs)
        prog = st["progress"]
        self.global_step = prog["global_step"]
        self.passes = list(prog["passes"])
        if own:  # same world size: continue this rank's random stream and train metrics exactly
            set_rng_state(st["rng"], self.device)
            self._resumed_metrics = st.get("train_metrics")
        else:
            reseed(self.spec.training.seed, self.global_step, self.session.rank, self.device)
        self.emit(
            EventType.LIFECYCLE,
            prog["pass"],
            phase=Phase.RESUMED.value,
            message=f"resumed at pass {prog['pass'] + 1} step {prog['step_in_pass']}",
            **self._plan(),
        )
        return prog["pass"], prog["step_in_pass"]

    def _warm_start(self) -> None:
        """``training.init_from``: a new job starts from another run's weights (and, unless
        ``reset_optimizer``, its optimizers' state), saved at any number of workers."""
        init = self.spec.training.init_from
        if init is None:
            return
        from trainer import storage
        from trainer.lifecycle import prepare_init_from

        if not self.init_from_checked:
            # in-process runs (no driver) resolve and check it here; a driver's workers use
            # what the driver checked (trainer/launch.py), once per run (docs/admission.md)
            given = init.checkpoint or ""
            init = prepare_init_from(self.spec, pinned=os.path.isabs(given)).training.init_from
        assert init is not None and init.checkpoint is not None
        location, at = init.checkpoint, init.pass_
        with tempfile.TemporaryDirectory(prefix="rectrain-init-") as tmp:
            local = storage.download_dir(location, tmp)
            regs = {} if init.reset_optimizer else self.regs.checkpoint_state()
            load_weights(
                local,
                world_size=self.session.world_size,
                dmp=self.dmp,
                dense_opt=None if init.reset_optimizer else self.dense_opt,
                regs=regs,
                field="training.init_from.checkpoint",
            )
            self.regs.state_loaded(regs)  # with reset_optimizer: freq_decay starts afresh
        what = "weights" if init.reset_optimizer else "weights and optimizer state"
        self.emit(
            EventType.LIFECYCLE,
            -1,
            phase="warm_start",
            message=f"{what} from {location}" + (f" (pass {at}, 0-based)" if at is not None else ""),
        )

    # ------------------------------------------------------------------ passes

    def run(self) -> list[dict[str, Any]]:
        spec = self.spec
        start_pass, start_step = self._resume()
        # the constant and logistic-regression references on this run's data (rank 0, cached per dataset)
        refs = references.for_run(spec, self.data) if self.session.rank == 0 else None
        for p in range(start_pass, spec.training.num_passes):
            if start_step == 0:
                if p > 0 and spec.training.reset_lr_each_pass:  # what lr_schedule.reset does
                    reset_optimizer_state(self.dmp, self.dense_opt)
                self.regs.on_pass_start(p, self.dmp, self.dense_opt)
            else:  # resumed inside pass p: re-apply its learning rates (lr is not checkpointed), no resets
                self.regs.on_pass_start(p, self.dmp, self.dense_opt, resumed=True)
            self.emit(
                EventType.LIFECYCLE,
                p,
                phase=Phase.PASS_STARTED.value,
                message=f"pass {p + 1}/{spec.training.num_passes}",
            )
            resumed_at = start_step
            t0, ckpt0 = time.perf_counter(), self.timings["checkpoint_s"]
            train_summary, seconds, examples, cpu_seconds = self._train_pass(p, start_step)
            t1 = time.perf_counter()
            start_step = 0
            val = self.evaluate("validation")
            test = self.evaluate("test")
            # mid-pass checkpoints (checkpoint_every_steps) count as checkpoint time only
            self.timings["training_s"] += t1 - t0 - (self.timings["checkpoint_s"] - ckpt0)
            self.timings["evaluation_s"] += time.perf_counter() - t1
            # the examples this process trained (a resumed pass ran fewer steps)
            ran = examples * (1 - resumed_at / self.data.steps_per_pass)
            result = PassResult(
                pass_=p,
                train_ne=train_summary.get("lifetime_ne"),
                train_calibration=train_summary.get("lifetime_calibration"),
                val_ne=val.get("lifetime_ne"),
                val_calibration=val.get("lifetime_calibration"),
                val_auc=val.get("auc"),
                val_ne_by_stratum=val.get("ne_by_stratum", {}),
                val_examples_by_stratum=val.get("examples_by_stratum", {}),
                test_ne=test.get("lifetime_ne"),
                test_calibration=test.get("lifetime_calibration"),
                test_auc=test.get("auc"),
                test_ne_by_stratum=test.get("ne_by_stratum", {}),
                test_examples_by_stratum=test.get("examples_by_stratum", {}),
                oracle_val_ne=val.get("oracle_ne"),
                oracle_test_ne=test.get("oracle_ne"),
                references=refs,
                train_examples=examples,
                train_seconds=seconds,
                # throughput over the steps this process ran (a resumed pass ran fewer)
                examples_per_s=ran / seconds if seconds > 0 else None,
                # training CPU time (all threads) summed over the workers, over the same
                # span as examples_per_s: comparable across worker counts on a shared box
                cpu_seconds=cpu_seconds,
                cpu_seconds_per_example=cpu_seconds / ran if ran > 0 else None,
                global_step=self.global_step,
            ).model_dump()  # a plain row: checkpointed and reported to Ray Train as it is
            self.passes.append(result)
            self.emit(EventType.PASS, p, **{k: v for k, v in result.items() if k != "pass"})
            t0 = time.perf_counter()
            if self._keeps_pass_checkpoint():
                self.checkpoint(p + 1, 0, {"pass": p})
            else:  # the results still reach the session (Ray Train: the run's last metrics)
                self.session.report(
                    {
                        "pass": p,
                        "global_step": self.global_step,
                        "passes": self.passes,
                        "timings": self.timings,
                    },
                    None,
                )
            self.timings["checkpoint_s"] += time.perf_counter() - t0
            self.emit(EventType.LIFECYCLE, p, phase=Phase.PASS_FINISHED.value, message=f"pass {p + 1} done")
        self.emit(
            EventType.LIFECYCLE,
            spec.training.num_passes - 1,
            phase=Phase.FINISHED.value,
            message=f"{spec.training.num_passes} passes, {self.global_step} steps",
        )
        return self.passes

    def _train_pass(self, p: int, start_step: int) -> tuple[dict[str, Any], float, int, float]:
        """Train pass ``p`` from ``start_step``: (train-metric summary, wall seconds, the
        pass's examples over all workers, training CPU seconds summed over the workers)."""
        spec = self.spec
        metrics = self._train_metric_module()
        if start_step > 0 and self._resumed_metrics is not None:
            ne.set_state(metrics, self._resumed_metrics)
        self._resumed_metrics = None
        steps = self.data.steps_per_pass
        global_batch = spec.data.batch_size * self.session.world_size
        self.regs.train_mode(p, self.dmp)
        t0, c0 = time.perf_counter(), time.process_time()
        t_window, ex_window = t0, 0
        every_n = spec.training.checkpoint_every_steps
        step = start_step
        batches = prefetch(self.data.train_batches(p, start_step), spec.data.prefetch_batches, pin=self._pin)
        # one step at a time, or TorchRec's sparse-dist pipeline (training.pipeline; drained at the end)
        for step, (batch, logits) in enumerate(pipeline.steps(self, batches), start=start_step):
            self.regs.on_step_end(step + 1, steps)  # shrink
            ne.update(metrics, logits, batch)
            self.global_step += 1
            ex_window += global_batch
            if not self._first_step_done:
                self._first_step_done = True
                self._emit_startup(p)
            if self.global_step % spec.metrics.report_every_steps == 0:
                s = ne.summarize(metrics.compute())
                now = time.perf_counter()
                self.emit(
                    EventType.TRAIN_WINDOW,
                    p,
                    ne_window=s.get("window_ne"),
                    ne_lifetime=s.get("lifetime_ne"),
                    calibration_window=s.get("window_calibration"),
                    examples=ex_window,
                    examples_per_s=ex_window / max(now - t_window, 1e-9),
                    steps_in_pass=step + 1,
                )
                t_window, ex_window = now, 0
                self.check_divergence(p, s.get("window_ne", 0.0))
            if every_n and self.global_step % every_n == 0 and step + 1 < steps:
                c0 = time.perf_counter()
                self.checkpoint(p, step + 1, {"pass": p, "step_in_pass": step + 1}, train_metrics=metrics)
                self.timings["checkpoint_s"] += time.perf_counter() - c0
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0  # this process, every thread (loader, intra-op pool)
        self.last_pass_cpu_seconds = cpu  # this rank's own share of the pass's cpu_seconds
        done = steps * global_batch  # the whole pass, also when it was resumed mid-way
        summary = ne.summarize(metrics.compute())
        cpu_total = self.check_divergence(
            p, summary.get("lifetime_ne", 0.0) if steps > start_step else 0.0, cpu_seconds=cpu
        )
        assert cpu_total is not None  # given cpu_seconds, check_divergence returns the sum
        return summary, seconds, done, cpu_total

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """NE, calibration, exact AUC, NE per stratum (and, on synthetic data, the oracle
        NE) on the ``split`` ("test" or "validation") rows of all ranks."""
        # each rank's batch-norm running statistics saw only its own batches: score
        # every slice with the same (averaged) statistics
        self.collectives.average_(batch_norm_statistics(self.dmp))
        steps = self.data.val_steps if split == "validation" else self.data.eval_steps
        if steps == 0:
            return {}
        spec = self.spec
        world = self.session.world_size

        def module(with_strata: bool):
            return ne.make_metric_module(
                window_size=steps * spec.data.batch_size * world,
                batch_size=spec.data.batch_size,
                world_size=world,
                rank=self.session.rank,
                device=self.device,
                with_strata=with_strata,
            )

        metrics = module(with_strata=True)
        auc = ExactAUC(self.collectives)
        oracle = module(with_strata=False) if split not in self._oracle else None
        has_probs = False
        counts = torch.zeros(3, dtype=torch.float64)
        self.dmp.eval()
        for batch in prefetch(self.data.eval_batches(split), spec.data.prefetch_batches, pin=self._pin):
            batch = batch.to(self.device, non_blocking=True)
            logits = self.dmp(batch.dense, batch.sparse)
            ne.update(metrics, logits, batch)
            auc.update(torch.sigmoid(logits), batch.labels, batch.weights)
            if oracle is not None and batch.probs is not None:
                ne.update_probs(oracle, batch.probs, batch)
                has_probs = True
            counts += torch.bincount(batch.strata.cpu(), weights=batch.weights.cpu().double(), minlength=3)
        self.dmp.train()
        out = ne.summarize(metrics.compute())
        out["auc"] = auc.compute()
        if oracle is not None:  # every rank reads the same days, so has_probs agrees across ranks
            self._oracle[split] = ne.summarize(oracle.compute()).get("lifetime_ne") if has_probs else None
        out["oracle_ne"] = self._oracle[split]
        counts = self.collectives.all_reduce(counts).cpu()
        out["examples_by_stratum"] = {s: int(c) for s, c in zip(STRATA, counts.tolist(), strict=True)}
        # a stratum with no examples has no NE
        out["ne_by_stratum"] = {
            s: (v if out["examples_by_stratum"][s] > 0 else None)
            for s, v in out.get("ne_by_stratum", {}).items()
        }
        return out


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
    (:mod:`trainer.warm`): the pid files, the torch threads, rank 0's metrics sink, a
    fresh :class:`Trainer` and its passes. ``marks``: the start-up's earlier wall-clock
    marks (names of :data:`STARTUP_LABELS`); ``job_store``: the job's storage location
    (rank 0 copies its TensorBoard files there); ``init_from_checked``: see
    :class:`Trainer`. Returns the finished Trainer."""
    from trainer.metrics.events import make_sink

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
    # what the worker ran with and its RSS before the Trainer existed (the interpreter,
    # torch, Ray): `rectrain bench` subtracts it from the worker's sampled peak
    info = {
        "pid": os.getpid(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads_at_start": threads_before,
        "torch_threads": torch.get_num_threads(),
        "rss_before_trainer_bytes": rss_bytes(),
    }
    (pid_dir / f"rank_{session.rank}.json").write_text(json.dumps(info))
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
