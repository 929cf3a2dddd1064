"""The harness's Ray Train runs: ``trainer.launch.run_job`` on 1 and 2 workers at the
same global batch (strong scaling), with each worker's peak RSS sampled from here."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.config import BenchConfig
from bench.paths import Workload


class _PeakSampler(threading.Thread):
    """Polls the RSS of the Ray workers (pids from run_dir/pids) and keeps the max per rank."""

    def __init__(self, pid_dir: Path, every_s: float = 0.1) -> None:
        super().__init__(name="bench-rss", daemon=True)
        self.pid_dir, self.every = pid_dir, every_s
        self.peaks: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            for p in self.pid_dir.glob("rank_*.pid") if self.pid_dir.exists() else []:
                try:
                    rss = psutil.Process(int(p.read_text())).memory_info().rss
                except (ValueError, OSError, psutil.Error):
                    continue
                self.peaks[p.stem] = max(self.peaks.get(p.stem, 0), int(rss))
            self.stop.wait(self.every)


def ray_worker_counts(device: str, gpus: int | None = None) -> list[int]:
    """Ray runs of the harness: 1 and 2 workers on CPU; on CUDA one GPU per worker, so
    1 and 2 where two GPUs are visible, else 1 alone (a 2-worker run would wait forever
    for a second GPU)."""
    if device != "cuda":
        return [1, 2]
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    return [k for k in (1, 2) if k <= gpus]


def run_ray(w: Workload, cfg: BenchConfig, workers: int, log: Callable[[str], None]) -> dict[str, Any]:
    """``trainer.launch.run_job`` on ``workers`` workers at the same global batch as one
    worker at ``w.batch`` (strong scaling: each worker's batch is ``w.batch / workers``,
    each pass the same examples), 2 passes of ``cfg.ray_steps`` steps; the second pass is
    reported. Memory: each worker's whole-process peak RSS (sampled from here) and that
    peak minus the RSS the worker recorded before building its Trainer."""
    from bench.paths import make_spec
    from trainer.launch import run_job

    if w.batch % workers:
        raise SystemExit(f"rectrain bench: --batch {w.batch} must divide by {workers} workers")
    per_worker = replace(w, batch=w.batch // workers)
    spec = make_spec(per_worker, cfg.ray_steps, num_workers=workers, num_passes=2, device=cfg.device)
    with tempfile.TemporaryDirectory(prefix=f"rectrain-bench-ray{workers}-") as d:
        run_dir = Path(d) / "run"
        sampler = _PeakSampler(run_dir / "pids")
        sampler.start()
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                res = run_job(spec, run_dir=run_dir, progress=False)
        finally:
            sampler.stop.set()
            sampler.join(2)
        wall = time.perf_counter() - t0
        # each worker's own record (trainer.loop.train_worker): threads, RSS before the Trainer
        infos = {p.stem: json.loads(p.read_text()) for p in (run_dir / "pids").glob("rank_*.json")}
    passes = res.passes
    est = spec.embedding_bytes_per_worker()
    full = sum(spec.memory_estimate_per_worker().values())
    peak = max(sampler.peaks.values()) if sampler.peaks else 0
    increases = {
        rank: pk - infos[rank]["rss_before_trainer_bytes"]
        for rank, pk in sampler.peaks.items()
        if rank in infos and infos[rank].get("rss_before_trainer_bytes")
    }
    inc = max(increases.values()) if increases else 0
    cpe = [p.cpu_seconds_per_example for p in passes]
    out = {
        "examples_per_s": passes[-1].examples_per_s,
        "examples_per_s_by_pass": [p.examples_per_s for p in passes],
        # training CPU time per example summed over the workers (pass 2): what strong
        # scaling costs in CPU, independent of how busy a shared machine is
        "cpu_seconds_per_example": cpe[-1],
        "cpu_seconds_per_example_by_pass": cpe,
        "workers": workers,
        "batch_per_worker": per_worker.batch,
        "global_batch": per_worker.batch * workers,
        "steps_per_pass": cfg.ray_steps,
        "torch_threads": sorted({i.get("torch_threads") for i in infos.values()}),
        "wall_seconds": wall,
        "worker_peak_rss_bytes": peak,
        "worker_rss_before_trainer_bytes": max(
            (i.get("rss_before_trainer_bytes") or 0 for i in infos.values()), default=0
        ),
        "worker_peak_increase_bytes": inc,
        "worker_estimate_bytes": est,
        "worker_full_estimate_bytes": full,
        "worker_peak_vs_estimate": peak / est if peak else float("nan"),
        "worker_peak_vs_full_estimate": peak / full if peak else float("nan"),
        "worker_increase_vs_full_estimate": inc / full if inc else float("nan"),
    }
    log(
        f"  ray {workers} worker(s), batch {per_worker.batch} each: {out['examples_per_s']:,.0f} ex/s, "
        f"{(cpe[-1] or float('nan')) * 1e6:.1f} CPU-us/example (pass 2), {wall:.0f} s wall"
    )
    return out


def ray_scaling(ray: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Strong scaling from the ``w1`` and ``w2`` Ray runs (same global batch): the ratio
    of their CPU-seconds per example (1.0: a second worker costs no extra CPU)."""
    if "w1" not in ray or "w2" not in ray:
        return None
    one, two = ray["w1"], ray["w2"]
    c1, c2 = one["cpu_seconds_per_example"], two["cpu_seconds_per_example"]
    return {
        "global_batch": one["global_batch"],
        "cpu_per_example_2w_vs_1w": c2 / c1 if c1 and c2 else float("nan"),
        "examples_per_s_2w_vs_1w": two["examples_per_s"] / one["examples_per_s"],
    }
