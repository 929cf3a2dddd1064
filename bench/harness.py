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

Here: :func:`run`, which drives a whole run (the main point, the scaling points, the
Ray runs, the targets) and writes its JSON. The parts it composes:

- :mod:`bench.config`: :class:`BenchConfig`, the path labels, :func:`tiny_config`;
- :mod:`bench.paths` / :mod:`bench.baseline`: the measured paths and the workload;
- :mod:`bench.measure`: one workload's interleaved rounds, peak memory, the fit check;
- :mod:`bench.ray_runs`: the Ray Train runs and their strong scaling;
- :mod:`bench.targets`: the targets checked against a result, the step-time breakdown;
- :mod:`bench.report`: the terminal table and the BENCHMARKS.md section.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.config import PATH_LABELS, BenchConfig, tiny_config
from bench.measure import fits, run_point
from bench.paths import NUM_DENSE, NUM_SPARSE, Workload
from bench.ray_runs import ray_scaling, ray_worker_counts, run_ray
from bench.targets import TARGETS, check_targets, step_breakdown


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
    res["breakdown"] = step_breakdown(main)

    if cfg.scaling:
        log("scaling (ceiling, kernel, trainer with loader + metrics):")
        res["scaling"], res["scaling_skipped"] = [], []
        for axis, pw in _scaling_points(cfg):
            if pw == w:
                res["scaling"].append({**_scaling_entry(axis, main), "main_point": True})
                continue
            ok, why = fits(pw, copies=1, device=cfg.device)
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

    res["targets"] = check_targets(res)
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
