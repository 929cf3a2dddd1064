"""The per-worker train loop: passes over the training days, evaluation after each.

The same :class:`Trainer` runs inside Ray Train workers (:class:`RaySession`) and
in a plain single process (:class:`LocalSession`, for benchmarks and unit tests);
only the session differs (rank, checkpoint I/O, ``report``): :mod:`trainer.session`.

NE is streamed by rank 0 straight to the metrics sink. ``ray.train.report`` is a
barrier that waits for Ray Train's controller poll (``trainer.launch.RAY_TRAIN_POLL_S``),
so it is called only with checkpoints (end of every pass, and every
``training.checkpoint_every_steps`` if set).

Beside the loop: checkpoints, resume and warm start (:mod:`trainer.run_state`),
evaluation (:mod:`trainer.evaluate`), divergence (:mod:`trainer.divergence`) and the
worker's entry (:mod:`trainer.worker`: :func:`train_worker`, :func:`run_worker`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainer import pipeline, references, run_state
from trainer.collectives import Collectives
from trainer.data.dataset import RankData
from trainer.data.prefetch import prefetch
from trainer.divergence import DivergenceCheck
from trainer.evaluate import evaluate, pass_row
from trainer.metrics import ne
from trainer.metrics.events import EventType, MetricsSink, Phase, make_event
from trainer.model.dlrm import DLRM
from trainer.model.embedding_init import init_embedding_tables
from trainer.model.sharding import dense_named_parameters, make_dense_optimizer, shard_model
from trainer.regularizers.regset import RegularizerSet
from trainer.regularizers.schedule import reset_optimizer_state
from trainer.run_state import PASS_CHECKPOINTS, keeps_pass_checkpoint
from trainer.session import LocalSession, RaySession, Session, local_backend
from trainer.spec import JobSpec
from trainer.worker import STARTUP_LABELS, rss_bytes, run_worker, startup_event, train_worker, worker_threads

# besides Trainer, names that moved out of this module and are still imported from it
# (a test patching one patches it where it is used: trainer.worker, trainer.session)
__all__ = [
    "PASS_CHECKPOINTS",
    "STARTUP_LABELS",
    "LocalSession",
    "RaySession",
    "Session",
    "Trainer",
    "keeps_pass_checkpoint",
    "local_backend",
    "rss_bytes",
    "run_worker",
    "train_worker",
    "worker_threads",
]


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
        "selected" one (see :func:`trainer.run_state.keeps_pass_checkpoint`).
        ``init_from_checked``: the driver resolved and checked ``training.init_from``
        just before this run's workers started (:func:`trainer.launch.prepare_run`): it
        is used as it is, not checked again."""
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
        self.divergence = DivergenceCheck(
            self.collectives, session.world_size, spec.training.on_divergence, self.emit
        )
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
        self.oracle_ne: dict[str, float | None] = {}
        self.resumed_train_metrics: dict[str, Any] | None = None  # states of a pass resumed mid-way
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

    # ------------------------------------------------------------------ steps

    def emit(self, type_: EventType, pass_: int, **payload: Any) -> None:
        if self.sink is not None:
            self.sink.emit(make_event(type_, self.global_step, pass_, **payload))

    def train_step(self, batch) -> torch.Tensor:
        """One step: forward, weighted BCE, backward (fused sparse update), dense step."""
        batch = self.regs.transform(batch, step=self.global_step)
        loss, logits = self.forward_loss(batch)
        self.dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.after_backward()
        self.divergence.note(loss, self.global_step)
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

    # ------------------------------------------------- state and evaluation

    def checkpoint(
        self, pass_idx: int, step_in_pass: int, metrics: dict[str, Any], train_metrics=None
    ) -> None:
        """Collective: a checkpoint of the run now, handed to the session
        (:func:`trainer.run_state.save`)."""
        run_state.save(self, pass_idx, step_in_pass, metrics, train_metrics)

    def _resume(self) -> tuple[int, int]:
        """Collective: (pass, step in pass) to go on from (:func:`trainer.run_state.resume`)."""
        return run_state.resume(self)

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Collective: the model's metrics on ``split`` (:func:`trainer.evaluate.evaluate`)."""
        return evaluate(self, split, self.oracle_ne)

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
            result = pass_row(
                p,
                train_summary,
                val,
                test,
                references=refs,
                examples=examples,
                # the examples this process trained (a resumed pass ran fewer steps)
                ran=examples * (1 - resumed_at / self.data.steps_per_pass),
                seconds=seconds,
                cpu_seconds=cpu_seconds,
                global_step=self.global_step,
            )
            self.passes.append(result)
            self.emit(EventType.PASS, p, **{k: v for k, v in result.items() if k != "pass"})
            t0 = time.perf_counter()
            run_state.end_of_pass(self, p)  # its checkpoint, or its results only
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
        world = self.session.world_size
        metrics = ne.make_metric_module(
            window_size=spec.metrics.window_size,
            batch_size=spec.data.batch_size,
            world_size=world,
            rank=self.session.rank,
            device=self.device,
        )
        if start_step > 0 and self.resumed_train_metrics is not None:
            ne.set_state(metrics, self.resumed_train_metrics)
        self.resumed_train_metrics = None
        steps = self.data.steps_per_pass
        global_batch = spec.data.batch_size * world
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
                marks = {**self.startup_marks, "first_step": time.time()}
                self.emit(EventType.LIFECYCLE, p, **startup_event(marks))
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
                self.divergence.check(p, self.global_step, s.get("window_ne", 0.0))
            if every_n and self.global_step % every_n == 0 and step + 1 < steps:
                ck0 = time.perf_counter()  # (c0 is the pass's CPU clock)
                self.checkpoint(p, step + 1, {"pass": p, "step_in_pass": step + 1}, train_metrics=metrics)
                self.timings["checkpoint_s"] += time.perf_counter() - ck0
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0  # this process, every thread (loader, intra-op pool)
        self.last_pass_cpu_seconds = cpu  # this rank's own share of the pass's cpu_seconds
        done = steps * global_batch  # the whole pass, also when it was resumed mid-way
        summary = ne.summarize(metrics.compute())
        last_ne = summary.get("lifetime_ne", 0.0) if steps > start_step else 0.0
        cpu_total = self.divergence.check(p, self.global_step, last_ne, cpu_seconds=cpu)
        assert cpu_total is not None  # given cpu_seconds, check returns the sum
        return summary, seconds, done, cpu_total
