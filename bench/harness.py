"""The benchmark harness: every path on one workload, interleaved, in one run.

Paths (all on the same ids, produced by rectrain's own data loader):

- ``ceiling``            compiled gather + row-wise AdaGrad loop over the kernel's tables
- ``ceiling_thp``        the same loop over a copy of the tables on transparent huge pages
- ``kernel``             FBGEMM TBE, fused EXACT_ROWWISE_ADAGRAD, forward + backward
- ``baseline``           nn.EmbeddingBag(sparse=True) per table + torch.optim.Adagrad (+ Adam dense)
- ``trainer_prebuilt``   rectrain train_step on batches already in memory (no loader, no metrics)
- ``trainer_nometrics``  rectrain loop with the prefetching loader, no metrics
- ``trainer``            rectrain loop with the loader and the NE metrics update + streaming
- ``loader``             the prefetching loader alone
- ``ray_w1`` / ``ray_w2`` ``trainer.launch.run_job`` through Ray Train, 1 worker at batch B and
                         2 workers at B/2 each (strong scaling: the same global batch), compared by
                         the training CPU-seconds per example the trainer reports per pass

In-process paths run interleaved: after one untimed warm-up round, ``rounds``
rounds, each running a block of steps of every path (in a new random order each
round), so slow drifts of a shared machine's load hit
every path alike. Ratios are medians of per-round ratios; examples/s are totals.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import gc
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.paths import NUM_DENSE, NUM_SPARSE, Workload

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

TARGETS = {
    "trainer_prebuilt_vs_peer": 1.3,
    "trainer_vs_kernel": 0.6,
    "trainer_vs_baseline": 2.0,
    "metrics_share": 0.05,
    "memory_vs_estimate": 1.3,  # peak RSS increase / the spec's full estimate (issue 15)
    "ray_memory_vs_estimate": 1.3,  # a Ray worker's peak minus its pre-Trainer RSS / the same
    "scaling_cpu_per_example": 1.3,  # CPU-s per example, 2 workers / 1 worker, same global batch
    "trainer_vs_ceiling": 0.5,
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


# --------------------------------------------------------------------------- memory


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


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


# --------------------------------------------------------------------------- measuring


def _summarize(samples: list[tuple[int, float, float]]) -> dict[str, Any]:
    ex = sum(e for e, _, _ in samples)
    sec = sum(s for _, s, _ in samples)
    cpu = sum(c for _, _, c in samples)
    return {
        "examples_per_s": ex / sec if sec > 0 else float("nan"),
        "examples": ex,
        "seconds": sec,
        "cpu_seconds": cpu,
        # process CPU time (all threads): less inflated than wall time when the machine is shared
        "examples_per_cpu_s": ex / cpu if cpu > 0 else float("nan"),
        "per_round_examples_per_s": [e / s if s > 0 else float("nan") for e, s, _ in samples],
        # the headline figure: robust to one round hit by another process's burst
        "median_examples_per_s": statistics.median(e / s if s > 0 else float("nan") for e, s, _ in samples),
    }


def _median_ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    ra, rb = a["per_round_examples_per_s"], b["per_round_examples_per_s"]
    return statistics.median(x / y for x, y in zip(ra, rb, strict=True))


def _interleave(
    loops: dict[str, Callable[[int], tuple[int, float]]], rounds: int, block: int, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    import random

    names = list(loops)
    for n in names:  # one untimed round: every path warm after all of them were built
        loops[n](min(block, 2))
    samples: dict[str, list[tuple[int, float, float]]] = {n: [] for n in names}
    rng = random.Random(0x5EED)
    for r in range(rounds):
        order = rng.sample(names, len(names))  # a new order each round: no path always follows the same one
        for n in order:
            c0 = time.process_time()
            ex, sec = loops[n](block)
            samples[n].append((ex, sec, time.process_time() - c0))
        log(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{n} {samples[n][-1][0] / samples[n][-1][1]:,.0f}" for n in names)
            + " ex/s"
        )
    return {n: _summarize(s) for n, s in samples.items()}


def run_point(w: Workload, cfg: BenchConfig, *, full: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Measure one workload. ``full``: every in-process path (+ profile); else the
    scaling subset (ceiling, kernel, trainer with loader and metrics)."""
    import torch

    from bench.paths import BaselinePath, CeilingPath, KernelPath, TrainerPaths, trainer_tbe

    device = cfg.device
    rounds = cfg.rounds if full else cfg.scaling_rounds
    block = cfg.block if full else max(1, math.ceil(cfg.scaling_steps / cfg.scaling_rounds))
    steps_per_pass = max(2 * block, 8)
    t_start = time.perf_counter()

    # ---- the trainer first, alone, so its peak memory is its own
    # its libraries (TorchRec, FBGEMM: ~0.2 GiB of code and data) loaded before the
    # baseline, as a Ray worker's baseline (its RSS before building the Trainer) has them
    from trainer.loop import rss_bytes

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        gpu0 = torch.cuda.memory_allocated()
    rss0 = rss_bytes()
    exact_peak = reset_peak_rss()
    tp = TrainerPaths(w, steps_per_pass, device)
    rss_built = rss_bytes()
    batches = tp.build_prebuilt(min(block, tp.steps_per_pass))
    tp.loop(2, metrics=True)  # warm: first-touch pages, JIT, metric states
    tp.prebuilt_loop(1)
    parts = tp.estimate_parts()
    mem: dict[str, Any] = {
        # the spec's full estimate (what capacity checks add up) and its parts
        "full_estimate_bytes": sum(parts.values()),
        "estimate_parts": parts,
        # the embeddings alone (kept as information; the target was set against it before)
        "estimate_bytes": tp.embedding_estimate(),
        "rss_before_bytes": rss0,
        "peak_rss_bytes": peak_rss(),
        "peak_exact": exact_peak,
        "build_increase_bytes": rss_built - rss0,
    }
    mem["peak_increase_bytes"] = mem["peak_rss_bytes"] - rss0
    mem["increase_vs_estimate"] = mem["peak_increase_bytes"] / mem["estimate_bytes"]
    mem["increase_vs_full_estimate"] = mem["peak_increase_bytes"] / mem["full_estimate_bytes"]
    mem["peak_vs_estimate"] = mem["peak_rss_bytes"] / mem["estimate_bytes"]
    if device == "cuda":
        # on a GPU the tables live in device memory: the fit check is against that
        mem["gpu_total_bytes"] = torch.cuda.get_device_properties(0).total_memory
        mem["gpu_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        mem["gpu_peak_increase_bytes"] = mem["gpu_peak_allocated_bytes"] - gpu0
        mem["gpu_increase_vs_estimate"] = mem["gpu_peak_increase_bytes"] / mem["estimate_bytes"]
        # what check_capacity puts on the GPU: tables, dense parameters and activations
        gpu_est = sum(parts[k] for k in ("embeddings", "dense", "activations"))
        mem["gpu_estimate_bytes"] = gpu_est
        mem["gpu_increase_vs_full_estimate"] = mem["gpu_peak_increase_bytes"] / gpu_est
    build_s = time.perf_counter() - t_start

    shared_tbe = trainer_tbe(tp, w) if not _fits(w, copies=2, device=device)[0] else None
    kernel = KernelPath(w, device, tbe=shared_tbe)
    kernel.set_batches(batches)
    kernel.loop(2)
    ceiling = CeilingPath(w, kernel, device)
    ceiling.loop(1)
    loops: dict[str, Callable[[int], tuple[int, float]]] = {"ceiling": ceiling.loop, "kernel": kernel.loop}
    extra: dict[str, Any] = {"ceiling_impl": ceiling.impl, "kernel_shares_trainer_tables": kernel.shared}
    if kernel.shared:
        log("  tables too big to hold twice: the kernel and ceiling paths use the trainer's own FBGEMM TBE")
    baseline = ceiling_thp = None
    if full:
        if cfg.huge_pages and device == "cpu":
            ceiling_thp = CeilingPath(w, kernel, device, huge_pages=True)
            ceiling_thp.loop(1)
            loops["ceiling_thp"] = ceiling_thp.loop
        baseline = BaselinePath(w, device)
        baseline.set_batches(batches)
        baseline.loop(2)
        loops["baseline"] = baseline.loop
        loops["trainer_prebuilt"] = tp.prebuilt_loop
        if cfg.peer and w.interaction != "dot":
            extra["peer_skipped"] = (
                f"interaction {w.interaction}: TorchRec's DLRM has the dot interaction only"
            )
            log(f"  peer skipped: {extra['peer_skipped']}")
        elif cfg.peer:
            from bench.peer import PeerPath, equal_work

            # built from the trainer's current weights, then both train the same
            # batches: equal losses show the timed work is the same
            peer = PeerPath(w, tp)
            extra["peer_equal_work"] = equal_work(tp, peer, batches, min(8, len(batches)))
            log(
                f"  peer equal-work check: max relative loss difference {extra['peer_equal_work']['max_rel_diff']:.2e}"
            )
            peer.set_batches(batches)
            peer.loop(2)
            loops["peer"] = peer.loop
        loops["trainer_nometrics"] = functools.partial(tp.loop, metrics=False)
    loops["trainer"] = functools.partial(tp.loop, metrics=True)
    if full:
        loops["loader"] = tp.loader_only
    tp.metrics_seconds = 0.0
    log(f"  built in {build_s:.1f} s; {rounds} rounds x {block} steps per path")
    paths = _interleave(loops, rounds, block, log)
    trainer_s = paths["trainer"]["seconds"]
    extra["metrics_seconds"] = tp.metrics_seconds
    extra["metrics_share"] = tp.metrics_seconds / trainer_s if trainer_s > 0 else float("nan")
    if full and cfg.profile:
        extra["profile"] = tp.profile(3)
    out = {
        "workload": w.asdict(),
        "memory": mem,
        "paths": paths,
        **extra,
        "ratios": _point_ratios(paths),
        "wall_seconds": time.perf_counter() - t_start,
    }
    tp.close()
    del tp, kernel, ceiling, baseline, ceiling_thp, loops, batches
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def _point_ratios(paths: dict[str, dict[str, Any]]) -> dict[str, float]:
    r: dict[str, float] = {}
    pairs = [
        ("trainer_prebuilt", "peer"),
        ("trainer", "peer"),
        ("peer", "kernel"),
        ("trainer", "kernel"),
        ("trainer", "ceiling"),
        ("kernel", "ceiling"),
        ("trainer", "baseline"),
        ("baseline", "kernel"),
        ("baseline", "ceiling"),
        ("trainer_prebuilt", "kernel"),
        ("trainer_nometrics", "kernel"),
        ("trainer", "trainer_nometrics"),
        ("ceiling", "ceiling_thp"),
        ("trainer", "ceiling_thp"),
        ("kernel", "ceiling_thp"),
        ("loader", "trainer"),
        ("trainer", "trainer_prebuilt"),
        ("trainer_prebuilt", "ceiling"),
        ("trainer_nometrics", "ceiling"),
        ("loader", "kernel"),
        ("loader", "ceiling"),
        ("ceiling_thp", "kernel"),
        ("ceiling_thp", "ceiling"),
        ("ceiling", "kernel"),
    ]
    for a, b in pairs:
        if a in paths and b in paths:
            r[f"{a}_vs_{b}"] = _median_ratio(paths[a], paths[b])
    return r


# --------------------------------------------------------------------------- Ray


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


# --------------------------------------------------------------------------- the run


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "fbgemm-gpu-cpu", "fbgemm-gpu", "torchrec", "ray", "numba"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _scaling_points(cfg: BenchConfig) -> list[tuple[str, Workload]]:
    w = cfg.workload
    pts: list[tuple[str, Workload]] = []
    for r in cfg.scaling_rows:
        pts.append(("rows", replace(w, rows=r)))
    for d in cfg.scaling_dims:
        pts.append(("dim", replace(w, dim=d)))
    for b in cfg.scaling_batches:
        pts.append(("batch", replace(w, batch=b)))
    return pts


def _fits(w: Workload, copies: int = 2, device: str = "cpu") -> tuple[bool, str]:
    """``copies`` sets of tables (+ accumulators) must fit the free memory with room: 2 =
    trainer + a separate kernel, 1 = the kernel and ceiling run on the trainer's own TBE.
    On CUDA the memory is the GPU's free memory (the tables live there)."""
    import psutil

    table = w.tables * (w.rows * w.dim * 4 + w.rows * 4)
    need = (1.3 * copies) * table + (1 << 30)
    if device == "cuda":
        import torch

        avail, where = torch.cuda.mem_get_info()[0], "GPU memory"
    else:
        avail, where = psutil.virtual_memory().available, "host memory"
    if need > avail:
        return False, f"needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB {where} available"
    return True, ""


def _scaling_entry(axis: str, point: dict[str, Any]) -> dict[str, Any]:
    p, m = point["paths"], point["memory"]
    w = point["workload"]
    return {
        "axis": axis,
        "rows": w["rows"],
        "dim": w["dim"],
        "batch": w["batch"],
        "ceiling_examples_per_s": p["ceiling"]["median_examples_per_s"],
        "kernel_examples_per_s": p["kernel"]["median_examples_per_s"],
        "trainer_examples_per_s": p["trainer"]["median_examples_per_s"],
        "trainer_vs_kernel": point["ratios"]["trainer_vs_kernel"],
        "kernel_vs_ceiling": point["ratios"]["kernel_vs_ceiling"],
        "trainer_vs_ceiling": point["ratios"]["trainer_vs_ceiling"],
        "peak_increase_bytes": m["peak_increase_bytes"],
        "estimate_bytes": m["estimate_bytes"],
        "increase_vs_estimate": m["increase_vs_estimate"],
        "full_estimate_bytes": m["full_estimate_bytes"],
        "increase_vs_full_estimate": m["increase_vs_full_estimate"],
        **{k: m[k] for k in ("gpu_increase_vs_estimate", "gpu_increase_vs_full_estimate") if k in m},
        "kernel_shares_trainer_tables": point.get("kernel_shares_trainer_tables", False),
    }


def _targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    main = res["main"]
    r = main["ratios"]
    out = []
    if "trainer_prebuilt_vs_peer" in r:
        out.append(
            {
                "name": "trainer_prebuilt_vs_peer",
                "what": "rectrain step / TorchRec's own DLRM loop (same model, optimizers, batches)",
                "target": f">= {TARGETS['trainer_prebuilt_vs_peer']}",
                "value": r["trainer_prebuilt_vs_peer"],
                "met": r["trainer_prebuilt_vs_peer"] >= TARGETS["trainer_prebuilt_vs_peer"],
            }
        )
    out += [
        {
            "name": "trainer_vs_kernel",
            "what": "rectrain step (loader + metrics) / FBGEMM kernel",
            "target": f">= {TARGETS['trainer_vs_kernel']}",
            "value": r["trainer_vs_kernel"],
            "met": r["trainer_vs_kernel"] >= TARGETS["trainer_vs_kernel"],
        },
        {
            "name": "trainer_vs_baseline",
            "what": "rectrain step / plain PyTorch",
            "target": f">= {TARGETS['trainer_vs_baseline']}",
            "value": r["trainer_vs_baseline"],
            "met": r["trainer_vs_baseline"] >= TARGETS["trainer_vs_baseline"],
        },
        {
            "name": "metrics_share",
            "what": "NE update + streaming, share of step time (timed in the loop)",
            "target": f"<= {TARGETS['metrics_share']}",
            "value": main["metrics_share"],
            "met": main["metrics_share"] <= TARGETS["metrics_share"],
        },
    ]
    gpu = "gpu_increase_vs_full_estimate" in main["memory"]
    key = "gpu_increase_vs_full_estimate" if gpu else "increase_vs_full_estimate"
    mems = [main["memory"][key]] + [s[key] for s in res.get("scaling", []) if key in s]
    worst = max(mems)
    out.append(
        {
            "name": "memory_vs_estimate",
            "what": (
                "peak GPU memory allocated by the trainer (torch.cuda.max_memory_allocated) / "
                "the spec's GPU parts (embeddings + dense + activations; worst point)"
                if gpu
                else "peak RSS increase of the in-process trainer / the spec's full estimate "
                "(sum of JobSpec.memory_estimate_per_worker; worst point)"
            ),
            "target": f"<= {TARGETS['memory_vs_estimate']}",
            "value": worst,
            "met": worst <= TARGETS["memory_vs_estimate"],
        }
    )
    rays = [r for r in res.get("ray", {}).values() if math.isfinite(r["worker_increase_vs_full_estimate"])]
    if rays and not gpu:
        worst_ray = max(r["worker_increase_vs_full_estimate"] for r in rays)
        out.append(
            {
                "name": "ray_memory_vs_estimate",
                "what": "Ray worker: peak RSS minus its RSS before the Trainer was built / the spec's "
                "full estimate (worst worker)",
                "target": f"<= {TARGETS['ray_memory_vs_estimate']}",
                "value": worst_ray,
                "met": worst_ray <= TARGETS["ray_memory_vs_estimate"],
            }
        )
    sc = res.get("ray_scaling")
    if sc and math.isfinite(sc["cpu_per_example_2w_vs_1w"]):
        out.append(
            {
                "name": "scaling_cpu_per_example",
                "what": f"CPU-seconds per example, 2 Ray workers / 1 (global batch {sc['global_batch']} both)",
                "target": f"<= {TARGETS['scaling_cpu_per_example']}",
                "value": sc["cpu_per_example_2w_vs_1w"],
                "met": sc["cpu_per_example_2w_vs_1w"] <= TARGETS["scaling_cpu_per_example"],
            }
        )
    out.append(
        {
            "name": "trainer_vs_ceiling",
            "what": "stretch: rectrain step / gather ceiling",
            "target": f">= {TARGETS['trainer_vs_ceiling']}",
            "value": r["trainer_vs_ceiling"],
            "met": r["trainer_vs_ceiling"] >= TARGETS["trainer_vs_ceiling"],
        }
    )
    return out


def _breakdown(main: dict[str, Any]) -> dict[str, float]:
    """Where a rectrain step's time goes, as shares of the full step (loader + metrics):
    kernel | dense arch + DMP/KJT plumbing + dense optimizer | loader in the loop | metrics.

    Built from the median per-round ratios (trainer ex/s over each lighter path's
    ex/s = that path's share of the step time), so load drifts between rounds cancel;
    on a noisy machine a share can still come out slightly negative."""
    r = main["ratios"]
    k, pre, nom = r["trainer_vs_kernel"], r["trainer_vs_trainer_prebuilt"], r["trainer_vs_trainer_nometrics"]
    metrics = main["metrics_share"]
    return {
        "kernel": k,
        "model_overhead": pre - k,
        "loader": nom - pre,
        "metrics": metrics,
        "unattributed": 1.0 - nom - metrics,
    }


def run(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    from bench.ceiling import bytes_per_example, memcpy_bandwidth

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("rectrain bench: --device cuda but torch sees no CUDA device")
    w = cfg.workload
    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "meta": {
            "command": cfg.command,
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": cfg.device,
            "gpu": torch.cuda.get_device_name(0) if cfg.device == "cuda" else None,
            "platform": platform.platform(),
            "versions": _versions(),
            "tiny": cfg.tiny,
            "load_avg_start": list(os.getloadavg()),
            "workload": {
                **w.asdict(),
                "ids": "rectrain synthetic source: user_id, ad_id power-law; "
                f"{w.tables - 2} context features uniform over the table; one id per table",
            },
            "steps": cfg.steps,
            "rounds": cfg.rounds,
        },
    }
    log(
        f"rectrain bench: {w.tables} tables x {w.rows:,} rows x dim {w.dim}, batch {w.batch}, "
        f"{w.dense} dense, device {cfg.device}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    )

    bw = memcpy_bandwidth(cfg.device, mbytes=16 if cfg.tiny else 256)
    bpe = bytes_per_example(w.tables, w.dim)
    log(f"memory copy: {bw / 1e9:.1f} GB/s (read + write); {bpe:,} bytes/example")

    log("main point (all in-process paths, interleaved):")
    main = run_point(w, cfg, full=True, log=log)
    ceil_eps = main["paths"]["ceiling"]["median_examples_per_s"]
    res["ceiling"] = {
        "impl": main["ceiling_impl"],
        "memcpy_bytes_per_s": bw,
        "bytes_per_example": bpe,
        "bandwidth_bound_examples_per_s": bw / bpe,
        "gather_lookups_per_s": ceil_eps * w.tables,
        "gather_examples_per_s": ceil_eps,
    }
    if "ceiling_thp" in main["paths"]:
        res["ceiling"]["gather_thp_lookups_per_s"] = (
            main["paths"]["ceiling_thp"]["median_examples_per_s"] * w.tables
        )
    res["main"] = main
    res["breakdown"] = _breakdown(main)

    if cfg.scaling:
        log("scaling (ceiling, kernel, trainer with loader + metrics):")
        res["scaling"], res["scaling_skipped"] = [], []
        for axis, pw in _scaling_points(cfg):
            if pw == w:
                res["scaling"].append({**_scaling_entry(axis, main), "main_point": True})
                continue
            ok, why = _fits(pw, copies=1, device=cfg.device)
            if not ok:
                log(f"  skip {axis}: rows {pw.rows:,} dim {pw.dim} batch {pw.batch}: {why}")
                res["scaling_skipped"].append(
                    {"axis": axis, "rows": pw.rows, "dim": pw.dim, "batch": pw.batch, "reason": why}
                )
                continue
            log(f" {axis}: rows {pw.rows:,} dim {pw.dim} batch {pw.batch}")
            res["scaling"].append(_scaling_entry(axis, run_point(pw, cfg, full=False, log=log)))

    if not cfg.skip_ray:
        import ray

        started_here = not ray.is_initialized()
        log("Ray Train (trainer.launch.run_job; per-pass examples/s is timed inside the loop):")
        res["ray"] = {}
        counts = ray_worker_counts(cfg.device)
        if counts != [1, 2]:
            log(
                f"  {torch.cuda.device_count()} GPU(s) visible: Ray runs with {counts} worker(s), one GPU each"
            )
        try:
            for k in counts:
                res["ray"][f"w{k}"] = run_ray(w, cfg, k, log)
        finally:
            if started_here and ray.is_initialized():
                ray.shutdown()
        ref = main["paths"]
        for k in counts:
            r = res["ray"][f"w{k}"]
            r["vs_kernel"] = r["examples_per_s"] / ref["kernel"]["median_examples_per_s"]
            r["vs_ceiling"] = r["examples_per_s"] / ceil_eps
            r["vs_inprocess_trainer"] = r["examples_per_s"] / ref["trainer"]["median_examples_per_s"]
        sc = ray_scaling(res["ray"])
        if sc is not None:
            res["ray_scaling"] = sc
            log(
                f"  strong scaling (global batch {sc['global_batch']}): CPU-s per example 2 workers / 1 = "
                f"{res['ray_scaling']['cpu_per_example_2w_vs_1w']:.2f}"
            )

    res["targets"] = _targets(res)
    res["meta"]["load_avg_end"] = list(os.getloadavg())
    res["meta"]["wall_seconds"] = time.perf_counter() - t0
    return res


def write_json(res: dict[str, Any], path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(res, indent=2, default=float) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.harness`` = ``rectrain bench``."""
    import argparse

    from bench.cli import add_arguments, run_from_args

    p = argparse.ArgumentParser(prog="python -m bench.harness")
    add_arguments(p)
    return run_from_args(p.parse_args(argv), argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

__all__ = [
    "BenchConfig",
    "NUM_DENSE",
    "NUM_SPARSE",
    "PATH_LABELS",
    "TARGETS",
    "Workload",
    "run",
    "tiny_config",
    "write_json",
]
