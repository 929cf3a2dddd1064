"""The spec's ``scaling`` section: how many workers, CPU or GPU, and their memory (checked
by :mod:`trainer.memory`). Imports no torch."""

from __future__ import annotations

from pydantic import Field

from trainer.config_base import Strict as _Strict


class ScalingSpec(_Strict):
    """Where to run.

    Args:
        num_workers (int): Ray Train workers (data-parallel dense, model-parallel
            sparse).
        use_gpu (bool): one GPU per worker, CUDA + NCCL; else CPU + gloo.
        cpus_per_worker (float): Ray CPUs reserved per worker; also the worker's torch
            intra-op threads (rounded down, at least 1).
        memory_per_worker_gb (float): memory each worker has; specs whose embedding
            estimate exceeds it are refused.
        gpu_memory_gb (float | None): memory of each worker's GPU (``use_gpu`` only).
            Set, the embedding estimate is checked against it (minus a reserve) at
            submit; unset, against the GPU the worker gets, when it starts. Tables
            always stay in GPU memory: a model that would need UVM/host spill is refused.
    """

    num_workers: int = Field(1, ge=1, le=1024)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0, le=256.0)
    memory_per_worker_gb: float = Field(8.0, gt=0.0, le=4096.0)
    gpu_memory_gb: float | None = Field(None, gt=0.0, le=4096.0)
