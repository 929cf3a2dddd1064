"""The measured paths. Each is built on one :class:`Workload` and runs blocks of steps.

Every path sees the same ids: the rectrain trainer's own data loader produces the
batches (synthetic Criteo-like source: 26 one-hot sparse features, 13 dense) and
the kernel, baseline and ceiling paths replay those batches' KJT values. Here: the
workload and its job spec, the rectrain trainer's paths, the FBGEMM kernel and the
gather ceiling; the plain-PyTorch baseline is :mod:`bench.baseline`.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

NUM_SPARSE = 26
NUM_DENSE = 13
_GIB = 1024**3


@dataclass(frozen=True)
class Workload:
    """The fixed Criteo-like shape: 26 one-hot tables x rows x dim, 13 dense features."""

    rows: int = 100_000
    dim: int = 64
    batch: int = 2048
    tables: int = NUM_SPARSE
    dense: int = NUM_DENSE
    dense_arch: tuple[int, ...] = (64,)  # + (dim,) appended: the dot interaction needs it
    over_arch: tuple[int, ...] = (64, 32)
    # "dot" (pairwise dot products, DLRM's default) or "concat" (dense output and pooled
    # embeddings side by side, no interaction arithmetic), as model.interaction
    interaction: str = "dot"
    # training.compile for rectrain's paths (the trainer and its Ray runs): the dense
    # arch + interaction + over arch through torch.compile; the peer and the plain
    # PyTorch model stay eager
    compile: bool = False

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


def make_spec(
    w: Workload, steps: int, *, num_workers: int = 1, num_passes: int = 1, device: str = "cpu"
) -> Any:
    """The rectrain job spec for the workload (synthetic source shaped like Criteo)."""
    from trainer.spec import parse_spec

    assert w.tables >= 2, "the synthetic source always has user_id and ad_id"
    emb_gb = w.tables * (w.rows * w.dim * 4 + w.rows * 4) / _GIB
    return parse_spec(
        {
            "model": {
                "embedding_dim": w.dim,
                "hash_size": w.rows,
                "dense_arch": [*w.dense_arch, w.dim],
                "over_arch": list(w.over_arch),
                "interaction": w.interaction,
            },
            "data": {
                "source": "synthetic",
                "synthetic": {
                    "num_users": w.rows,
                    "num_ads": w.rows,
                    "history_length": 0,
                    "num_context_features": w.tables - 2,
                    "context_cardinality": w.rows,
                    "num_dense_features": w.dense,
                    "examples_per_day": w.batch * steps * num_workers,
                },
                "train_days": [0],
                "test_days": [],
                "batch_size": w.batch,
            },
            "training": {"num_passes": num_passes, "compile": w.compile},
            "scaling": {
                "num_workers": num_workers,
                "use_gpu": device == "cuda",
                "memory_per_worker_gb": max(8.0, math.ceil(emb_gb * 2 + 1)),
            },
            "metrics": {"window_size": max(100_000, w.batch * num_workers)},
        }
    )


def sync_device(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- rectrain trainer


class TrainerPaths:
    """One in-process rectrain :class:`Trainer` (world size 1, DMP-sharded, gloo) and
    the loops that drive it, mirroring ``Trainer._train_pass``: the prefetching
    loader, ``batch.to``, ``train_step``, the NE metrics update and the windowed NE
    events streamed to the run's events.jsonl every ``metrics.report_every_steps``."""

    def __init__(self, w: Workload, steps: int, device: str) -> None:
        from trainer.loop import LocalSession, Trainer
        from trainer.metrics import ne
        from trainer.metrics.events import JsonlFileSink
        from trainer.results import EVENTS_FILE

        self.w, self.device = w, device
        self.spec = make_spec(w, steps, device=device)
        self._tmp = tempfile.TemporaryDirectory(prefix="rectrain-bench-")
        run_dir = Path(self._tmp.name)
        self.sink = JsonlFileSink(run_dir / EVENTS_FILE)
        session = LocalSession(run_dir, torch.device(device))
        self.trainer = Trainer(self.spec, session, run_dir, sink=self.sink)
        self.ne = ne
        s = self.spec
        self.metrics = ne.make_metric_module(
            window_size=s.metrics.window_size,
            batch_size=s.data.batch_size,
            world_size=1,
            rank=0,
            device=torch.device(device),
        )
        self.steps_per_pass = self.trainer.data.steps_per_pass
        self._cursor = 0
        self._pass = 0
        self.metrics_seconds = 0.0
        self.metrics_steps = 0
        self.prebuilt: list[Any] = []

    def embedding_estimate(self) -> int:
        return self.spec.embedding_bytes_per_worker()

    def estimate_parts(self) -> dict[str, int]:
        """The spec's full per-worker estimate by part (what capacity checks add up)."""
        return self.spec.memory_estimate_per_worker()

    def build_prebuilt(self, n: int) -> list[Any]:
        """Materialise ``n`` batches from the trainer's own loader (same ids for all paths)."""
        it = self.trainer.data.train_batches(0)
        self.prebuilt = [next(it) for _ in range(min(n, self.steps_per_pass))]
        return self.prebuilt

    def _batches(self, n: int):
        from trainer.data.prefetch import prefetch

        if self._cursor + n > self.steps_per_pass:
            self._cursor, self._pass = 0, self._pass + 1
        start = self._cursor
        self._cursor += n
        return prefetch(self.trainer.data.train_batches(self._pass, start), self.spec.data.prefetch_batches)

    def loop(self, n: int, *, metrics: bool) -> tuple[int, float]:
        """``n`` steps with the loader in the loop; returns (examples, seconds)."""
        from trainer.metrics.events import EventType

        tr = self.trainer
        report_every = self.spec.metrics.report_every_steps
        it = self._batches(n)
        done = 0
        t0 = time.perf_counter()
        try:
            for batch in it:
                batch = batch.to(tr.device, non_blocking=True)
                logits = tr.train_step(batch)
                if metrics:
                    tm = time.perf_counter()
                    self.ne.update(self.metrics, logits, batch)
                    self.metrics_steps += 1
                    if self.metrics_steps % report_every == 0:
                        s = self.ne.summarize(self.metrics.compute())
                        tr.emit(
                            EventType.TRAIN_WINDOW,
                            self._pass,
                            ne_window=s.get("window_ne"),
                            ne_lifetime=s.get("lifetime_ne"),
                            calibration_window=s.get("window_calibration"),
                            examples=report_every * len(batch),
                            examples_per_s=0.0,
                            steps_in_pass=done + 1,
                        )
                    sync_device(self.device)
                    self.metrics_seconds += time.perf_counter() - tm
                tr.global_step += 1
                done += 1
                if done >= n:
                    break
            sync_device(self.device)
        finally:
            it.close()
        return done * self.w.batch, time.perf_counter() - t0

    def prebuilt_loop(self, n: int) -> tuple[int, float]:
        """``n`` train steps on batches already in memory (no loader, no metrics)."""
        tr = self.trainer
        batches = [b.to(tr.device) for b in self.prebuilt[:n]] if self.device == "cuda" else self.prebuilt
        sync_device(self.device)
        t0 = time.perf_counter()
        for i in range(n):
            tr.train_step(batches[i % len(batches)])
            tr.global_step += 1
        sync_device(self.device)
        return n * self.w.batch, time.perf_counter() - t0

    def loader_only(self, n: int) -> tuple[int, float]:
        """``n`` batches from the prefetching loader with nothing consuming them."""
        it = self._batches(n)
        done = 0
        t0 = time.perf_counter()
        try:
            for batch in it:
                batch.to(self.device, non_blocking=True)
                done += 1
                if done >= n:
                    break
            sync_device(self.device)
        finally:
            it.close()
        return done * self.w.batch, time.perf_counter() - t0

    def profile(self, n: int = 3, top: int = 10) -> list[dict[str, Any]]:
        """torch.profiler over ``n`` loader + train + metrics steps: top ops by self time."""
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        with profile(activities=acts) as prof:
            self.loop(n, metrics=True)
        rows = []
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
            rows.append(
                {
                    "op": e.key,
                    "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / n,
                    "share": e.self_cpu_time_total / total,
                    "calls_per_step": e.count / n,
                }
            )
        return rows

    def close(self) -> None:
        self.sink.close()
        del self.trainer
        self._tmp.cleanup()


# --------------------------------------------------------------------------- raw FBGEMM kernel


def trainer_tbe(trainer_paths: TrainerPaths, w: Workload) -> torch.nn.Module | None:
    """The FBGEMM TBE inside the trainer's DMP when one module holds every table (the
    memory-saving kernel path for tables too big to hold twice), else None."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

    roots = list(trainer_paths.trainer.dmp.modules())
    for m in list(roots):  # a sharded EBC keeps its lookups in a plain list
        roots += [x for lk in getattr(m, "_lookups", None) or [] for x in lk.modules()]
    tbes = list({id(m): m for m in roots if isinstance(m, SplitTableBatchedEmbeddingBagsCodegen)}.values())
    if len(tbes) == 1 and len(tbes[0].embedding_specs) == w.tables:
        return tbes[0]
    return None


class KernelPath:
    """FBGEMM's table-batched embedding with fused EXACT_ROWWISE_ADAGRAD alone:
    forward + backward (the update runs inside backward) on the batches' KJT ids."""

    def __init__(
        self,
        w: Workload,
        device: str,
        lr: float = 0.04,
        eps: float = 1e-8,
        tbe: torch.nn.Module | None = None,
    ) -> None:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import ComputeDevice, EmbeddingLocation
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            SplitTableBatchedEmbeddingBagsCodegen,
        )

        self.w, self.device = w, device
        loc, comp = (
            (EmbeddingLocation.DEVICE, ComputeDevice.CUDA)
            if device == "cuda"
            else (EmbeddingLocation.HOST, ComputeDevice.CPU)
        )
        self.shared = tbe is not None
        self.tbe = tbe or SplitTableBatchedEmbeddingBagsCodegen(
            [(w.rows, w.dim, loc, comp)] * w.tables,
            optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
            learning_rate=lr,
            eps=eps,
            device=torch.device(device),
        )
        self.grad = (torch.rand(w.batch, w.tables * w.dim, device=device) - 0.5) * 1e-2
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def set_batches(self, batches: list[Any]) -> None:
        self.inputs = [
            (b.sparse.values().to(self.device), b.sparse.offsets().to(self.device)) for b in batches
        ]

    def tables(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The kernel's own per-table weight and accumulator views (for the ceiling loop)."""
        # FBGEMM's module; torch types Module.__getattr__ as Tensor | Module
        weights = self.tbe.split_embedding_weights()  # type: ignore[operator]
        moms = [s[0] for s in self.tbe.split_optimizer_states()]  # type: ignore[operator]
        return weights, moms

    def loop(self, n: int) -> tuple[int, float]:
        sync_device(self.device)
        t0 = time.perf_counter()
        for i in range(n):
            idx, off = self.inputs[i % len(self.inputs)]
            out = self.tbe(idx, off)
            out.backward(self.grad)
        sync_device(self.device)
        return n * self.w.batch, time.perf_counter() - t0


class CeilingPath:
    """The compiled gather + row-wise AdaGrad loop over the kernel's own tables."""

    def __init__(self, w: Workload, kernel: KernelPath, device: str, huge_pages: bool = False) -> None:
        from bench.ceiling import GatherCeiling, alloc_huge

        self.w, self.device = w, device
        weights, moms = kernel.tables()
        self.huge = False
        if huge_pages and device == "cpu":
            # a copy of the kernel's tables on transparent huge pages (same values, same size)
            flat = alloc_huge((w.tables, w.rows, w.dim))
            mflat = alloc_huge((w.tables, w.rows))
            for t in range(w.tables):
                flat[t].copy_(weights[t])
                mflat[t].copy_(moms[t])
            weights, moms = list(flat.unbind(0)), list(mflat.unbind(0))
            self._keep = (flat, mflat)
            self.huge = True
        self.g = GatherCeiling(weights, moms, w.batch, device=device)
        self.impl = self.g.impl + (", THP" if self.huge else "")
        self.inputs = kernel.inputs

    def loop(self, n: int) -> tuple[int, float]:
        self.g.sync()
        t0 = time.perf_counter()
        for i in range(n):
            self.g.step(self.inputs[i % len(self.inputs)][0])
        self.g.sync()
        return n * self.w.batch, time.perf_counter() - t0
