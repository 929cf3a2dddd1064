"""What a harness run measures and how: the paths' labels, :class:`BenchConfig` (the
workload, steps, rounds, which parts run) and the smoke-size :func:`tiny_config`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from bench.paths import Workload

PATH_LABELS = {
    "ceiling": "gather ceiling (compiled loop)",
    "ceiling_thp": "gather ceiling, huge pages",
    "kernel": "FBGEMM TBE kernel alone",
    "baseline": "plain PyTorch (EmbeddingBag+Adagrad)",
    "trainer_prebuilt": "rectrain step, batches in memory",
    "trainer_nometrics": "rectrain step + loader",
    "trainer": "rectrain step + loader + metrics",
    "peer": "TorchRec DLRM + TrainPipelineSparseDist (peer)",
    "loader": "rectrain loader alone",
    "ray_w1": "rectrain on Ray Train, 1 worker, batch B",
    "ray_w2": "rectrain on Ray Train, 2 workers, batch B/2 each",
}


@dataclass
class BenchConfig:
    workload: Workload = field(default_factory=Workload)
    steps: int = 24  # timed steps per in-process path (split over the rounds)
    rounds: int = 6
    device: str = "cpu"
    skip_ray: bool = False
    ray_steps: int = 20  # steps per pass in the Ray runs (2 passes; the second is reported)
    scaling: bool = True
    scaling_rows: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    scaling_dims: tuple[int, ...] = (16, 32, 64, 128)
    scaling_batches: tuple[int, ...] = (512, 2048, 8192)
    scaling_steps: int = 6
    scaling_rounds: int = 2
    profile: bool = True
    huge_pages: bool = True
    peer: bool = True  # TorchRec's own DLRM + TrainPipelineSparseDist on the same batches
    tiny: bool = False
    command: str = ""

    @property
    def block(self) -> int:
        return max(1, math.ceil(self.steps / self.rounds))


def tiny_config(**overrides: Any) -> BenchConfig:
    """Smoke size: seconds, not minutes (figures meaningless, the JSON complete)."""
    cfg = BenchConfig(
        workload=Workload(rows=2_000, dim=16, batch=128, dense_arch=(16,), over_arch=(16,)),
        steps=4,
        rounds=2,
        ray_steps=4,
        scaling_rows=(500, 2_000),
        scaling_dims=(8, 16),
        scaling_batches=(64, 128),
        scaling_steps=2,
        scaling_rounds=1,
        tiny=True,
    )
    return replace(cfg, **overrides)
