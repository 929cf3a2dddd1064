"""Measuring the in-process paths on one workload: peak memory, the interleaved timed
rounds (:func:`run_point`), their summaries and ratios, and whether a workload's
tables fit the free memory."""

from __future__ import annotations

import functools
import gc
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.config import BenchConfig
from bench.paths import Workload

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


def fits(w: Workload, copies: int = 2, device: str = "cpu") -> tuple[bool, str]:
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

    from bench.baseline import BaselinePath
    from bench.paths import CeilingPath, KernelPath, TrainerPaths, trainer_tbe

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

    shared_tbe = trainer_tbe(tp, w) if not fits(w, copies=2, device=device)[0] else None
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
