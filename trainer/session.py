"""Where a :class:`trainer.loop.Trainer` runs: its rank, device, checkpoint I/O and
``report``.

:class:`RaySession` inside a Ray Train worker, :class:`LocalSession` in a plain single
process (benchmarks and unit tests); a warm worker has its own
(:class:`trainer.warm_worker.WarmSession`). The Trainer is the same in all of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist


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
