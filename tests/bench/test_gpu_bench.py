"""``rectrain bench --device cuda`` decisions that need no GPU (issue 16.6): NCCL for the
in-process trainer, one Ray worker per visible GPU, and the fit check against GPU memory
(a stubbed ``torch.cuda.mem_get_info``). The GPU run itself is in BENCHMARKS.md."""

from __future__ import annotations

import torch

from bench.measure import fits
from bench.paths import Workload
from bench.ray_runs import ray_worker_counts
from trainer.session import local_backend


def test_in_process_trainer_uses_nccl_on_cuda():
    assert local_backend(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"
    assert local_backend(torch.device("cpu")) == "gloo"


def test_ray_runs_one_worker_per_gpu():
    assert ray_worker_counts("cuda", gpus=1) == [1]
    assert ray_worker_counts("cuda", gpus=2) == [1, 2]
    assert ray_worker_counts("cuda", gpus=8) == [1, 2]
    assert ray_worker_counts("cuda", gpus=0) == []
    assert ray_worker_counts("cpu", gpus=0) == [1, 2]


def test_fit_check_reads_gpu_memory_on_cuda(monkeypatch):
    w = Workload(rows=1_000_000, dim=128)  # ~13 GiB of tables
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (8 * 1024**3, 80 * 1024**3))
    ok, why = fits(w, copies=1, device="cuda")
    assert not ok and "GPU memory" in why
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (70 * 1024**3, 80 * 1024**3))
    assert fits(w, copies=1, device="cuda")[0]
