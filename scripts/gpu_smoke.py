"""GPU smoke test: ``make gpu-smoke``. What the next person with a GPU runs first.

Parts, each printed as it runs, each skipped (with the reason) where it cannot run:

1. ``install``  versions of torch / fbgemm-gpu / torchrec / ray, torch's CUDA build,
                the GPUs torch sees and the driver nvidia-smi reports.
2. ``job``      the quickstart on one GPU in this process (world 1, NCCL): test NE and
                examples/s per pass, the plan's sharding, peak GPU memory vs the spec's
                embedding estimate.
   ``regs``     the same with max_norm + sparse_l1 + sparse_l2 (the touched-rows hooks on
                the GPU's row-wise plan); fails if a row is longer than max_norm's c after.
   ``pipeline`` the quickstart with sparse_dropout + sse_se + freq_decay + max_norm, once
                with ``training.pipeline: none`` and once with ``sparse_dist`` (TorchRec's
                TrainPipelineSparseDist on CUDA streams): fails if the per-pass NE or the
                embeddings differ (beyond 1e-4); reports sparse_dist / none examples/s.
3. ``ray1``     the quickstart through Ray Train on 1 GPU (``trainer.launch.run_job``).
4. ``ray2``     the same on 2 GPUs, when two are visible.
5. ``bench``    ``rectrain bench --device cuda --no-scaling`` (Ray runs = GPUs visible).

Without a GPU the install part runs and every other part says "skip" and the script
exits 0, so CI can call it; ``--require-gpu`` makes a missing GPU an error instead.
A part that fails is reported and the script goes on; the exit code is 1 if any failed.
Log: stdout, plus ``--out DIR/gpu-smoke.json`` with what each part measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
PARTS = ("install", "job", "regs", "pipeline", "ray1", "ray2", "bench")
_GIB = 1024**3


class Skip(Exception):
    """A part that cannot run here (no GPU, no Ray, one GPU only)."""


def _versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"python": sys.version.split()[0]}
    for pkg in ("torch", "fbgemm-gpu", "fbgemm-gpu-cpu", "torchrec", "ray"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def part_install(ctx: dict[str, Any]) -> dict[str, Any]:
    import torch

    out = _versions()
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    out["gpus"] = [
        {
            "name": torch.cuda.get_device_name(i),
            "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / _GIB, 1),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
        }
        for i in range(torch.cuda.device_count())
    ]
    smi = shutil.which("nvidia-smi")
    if smi:
        r = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        out["driver"] = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    import fbgemm_gpu  # noqa: F401  (loads the CUDA kernels' libraries)
    import torchrec  # noqa: F401

    ctx["gpus"] = len(out["gpus"])
    if ctx["require_gpu"] and not out["cuda_available"]:
        raise RuntimeError("--require-gpu: torch sees no CUDA device (torch.cuda.is_available() is False)")
    return out


def _need_gpus(ctx: dict[str, Any], n: int) -> None:
    if ctx.get("gpus", 0) < n:
        raise Skip(f"needs {n} GPU(s), {ctx.get('gpus', 0)} visible")


def _quickstart(
    num_workers: int,
    examples_per_day: int | None,
    regularizers: list | None = None,
    pipeline: str | None = None,
):
    import yaml

    from trainer.spec import parse_spec

    data = yaml.safe_load(QUICKSTART.read_text())
    data["scaling"] = {"num_workers": num_workers, "use_gpu": True, "cpus_per_worker": 1}
    if pipeline:
        data.setdefault("training", {})["pipeline"] = pipeline
    if examples_per_day:
        data["data"]["synthetic"]["examples_per_day"] = examples_per_day
    if regularizers:
        data["regularizers"] = regularizers
    return parse_spec(data)


MAX_NORM = 0.5


def part_job(ctx: dict[str, Any]) -> dict[str, Any]:
    return _inprocess_job(ctx, regularizers=None)


def part_regs(ctx: dict[str, Any]) -> dict[str, Any]:
    """The quickstart with the row-level regularizers (touched-rows hooks on the GPU plan):
    afterwards no embedding row may be longer than max_norm's c."""
    regs = [
        {"type": "max_norm", "c": MAX_NORM},
        {"type": "sparse_l1", "weight": 1e-4},
        {"type": "sparse_l2", "weight": 1e-4},
    ]
    return _inprocess_job(ctx, regularizers=regs)


def part_pipeline(ctx: dict[str, Any]) -> dict[str, Any]:
    """``training.pipeline``: sparse_dist against none on one GPU, the KJT rewrites and
    the TBE hooks on (docs/regularizers.md, "Order within a step")."""
    _need_gpus(ctx, 1)
    import torch
    import torch.distributed as dist

    from trainer.loop import LocalSession, Trainer
    from trainer.regularizers.touched import find_tbes

    regs = [
        {"type": "sparse_dropout", "p": 0.1},
        {"type": "sse_se", "p": 0.05},
        {"type": "freq_decay", "alpha": 1e-3},
        {"type": "max_norm", "c": MAX_NORM},
    ]
    runs: dict[str, Any] = {}
    for mode in ("none", "sparse_dist"):
        spec = _quickstart(1, ctx["examples"], regs, pipeline=mode)
        run_dir = Path(tempfile.mkdtemp(prefix=f"rectrain-gpu-smoke-{mode}-"))
        try:
            tr = Trainer(spec, LocalSession(run_dir, torch.device("cuda", 0)), run_dir)
            passes = tr.run()
            weights = [
                w.detach().cpu().clone() for m in find_tbes(tr.dmp) for w in m.split_embedding_weights()
            ]
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        runs[mode] = (passes, weights)
    (pa, wa), (pb, wb) = runs["none"], runs["sparse_dist"]
    ne_diff = max(abs(a["test_ne"] - b["test_ne"]) for a, b in zip(pa, pb, strict=True))
    w_diff = max(float((x - y).abs().max()) for x, y in zip(wa, wb, strict=True))
    ratio = [b["examples_per_s"] / a["examples_per_s"] for a, b in zip(pa, pb, strict=True)]
    out = {
        "regularizers": [r["type"] for r in regs],
        "test_ne": {"none": [p["test_ne"] for p in pa], "sparse_dist": [p["test_ne"] for p in pb]},
        "max_test_ne_diff": ne_diff,
        "max_weight_diff": w_diff,
        "sparse_dist_over_none_examples_per_s": [round(r, 3) for r in ratio],
    }
    if ne_diff > 1e-4 or w_diff > 1e-4:
        raise RuntimeError(f"training.pipeline changed the results: {out}")
    return out


def _inprocess_job(ctx: dict[str, Any], regularizers: list[dict[str, Any]] | None) -> dict[str, Any]:
    _need_gpus(ctx, 1)
    import torch
    import torch.distributed as dist

    from trainer.loop import LocalSession, Trainer
    from trainer.metrics.events import JsonlFileSink
    from trainer.model.sharding import device_hbm_cap
    from trainer.results import EVENTS_FILE

    spec = _quickstart(1, ctx["examples"], regularizers)
    run_dir = Path(tempfile.mkdtemp(prefix="rectrain-gpu-smoke-"))
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    session = LocalSession(run_dir, torch.device("cuda", 0))
    sink = JsonlFileSink(run_dir / EVENTS_FILE)
    try:
        t0 = time.perf_counter()
        tr = Trainer(spec, session, run_dir, sink=sink)
        plan = {
            name: f"{p.sharding_type}/{p.compute_kernel}"
            for mod_plan in tr.dmp.plan.plan.values()
            for name, p in mod_plan.items()
        }
        passes = tr.run()
        wall = time.perf_counter() - t0
        backend = dist.get_backend()
        max_row_norm = None
        if regularizers:
            from trainer.regularizers.touched import find_tbes

            max_row_norm = max(
                float(w.norm(dim=1).max()) for m in find_tbes(tr.dmp) for w in m.split_embedding_weights()
            )
            if max_row_norm > MAX_NORM * (1 + 1e-4):
                raise RuntimeError(f"max_norm c={MAX_NORM}: a row of norm {max_row_norm:.4f} after training")
    finally:
        sink.close()
        if dist.is_initialized():
            dist.destroy_process_group()
    peak = torch.cuda.max_memory_allocated() - base
    est = spec.embedding_bytes_per_worker()
    return {
        "device": torch.cuda.get_device_name(0),
        "backend": str(backend),
        "planner_hbm_cap_gib": round(device_hbm_cap(spec, torch.device("cuda", 0)) / _GIB, 1),
        "regularizers": [r["type"] for r in regularizers or []],
        "max_row_norm": max_row_norm,
        "plan": plan,
        "passes": [
            {
                k: p.get(k)
                for k in ("pass", "train_ne", "test_ne", "test_auc", "examples_per_s", "train_seconds")
            }
            for p in passes
        ],
        "wall_seconds": round(wall, 1),
        "gpu_peak_allocated_bytes": peak,
        "estimate_bytes": est,
        "gpu_peak_vs_estimate": round(peak / est, 2),
    }


def _ray_job(ctx: dict[str, Any], workers: int) -> dict[str, Any]:
    _need_gpus(ctx, workers)
    try:
        import ray
    except ImportError as e:
        raise Skip(f"ray is not installed ({e})") from None
    from trainer.launch import run_job

    spec = _quickstart(workers, ctx["examples"])
    with tempfile.TemporaryDirectory(prefix=f"rectrain-gpu-smoke-ray{workers}-") as d:
        res = run_job(spec, run_dir=Path(d) / "run", progress=False)
    if ray.is_initialized():
        ray.shutdown()
    return {
        "workers": workers,
        "wall_seconds": round(res.wall_seconds or 0.0, 1),
        "selected_pass": res.selected_pass,
        "test_ne_at_selected": res.test_ne_at_selected,
        "test_ne_at_last": res.test_ne_at_last,
        "oracle_test_ne": res.oracle_test_ne,
        "examples_per_s_by_pass": [p.examples_per_s for p in res.passes],
    }


def part_ray1(ctx: dict[str, Any]) -> dict[str, Any]:
    return _ray_job(ctx, 1)


def part_ray2(ctx: dict[str, Any]) -> dict[str, Any]:
    return _ray_job(ctx, 2)


def part_bench(ctx: dict[str, Any]) -> dict[str, Any]:
    _need_gpus(ctx, 1)
    out_json = Path(ctx["out"]) / "bench-cuda.json"
    cmd = [sys.executable, "-m", "cli", "bench", "--device", "cuda", "--no-scaling"]
    cmd += ["--out", str(out_json), "--no-markdown", *ctx["bench_args"]]
    try:
        import ray  # noqa: F401
    except ImportError:
        cmd.append("--skip-ray")
    print("  $", " ".join(cmd[1:]), flush=True)
    # the job part's rendezvous (MASTER_ADDR/PORT) stays in this process: not the bench's
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    r = subprocess.run(cmd, cwd=ROOT, env=env)
    if r.returncode:
        raise RuntimeError(f"rectrain bench exited {r.returncode}")
    return {"results": str(out_json), "command": " ".join(cmd[1:])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    p.add_argument("--out", default="runs/gpu-smoke", help="folder for gpu-smoke.json and bench JSON")
    p.add_argument("--require-gpu", action="store_true", help="fail (not skip) without a CUDA device")
    p.add_argument(
        "--examples", type=int, default=None, help="examples per day for the jobs (default: the quickstart's)"
    )
    p.add_argument("--bench-args", default="", help="extra arguments for rectrain bench (one string)")
    args = p.parse_args(argv)
    parts = [x for x in args.parts.split(",") if x]
    bad = [x for x in parts if x not in PARTS]
    if bad:
        p.error(f"--parts: unknown {bad}; choose among {', '.join(PARTS)}")
    if "install" not in parts:
        parts.insert(0, "install")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    ctx: dict[str, Any] = {
        "require_gpu": args.require_gpu,
        "examples": args.examples,
        "out": args.out,
        "bench_args": args.bench_args.split(),
    }
    report: dict[str, Any] = {}
    failed = False
    for name in parts:
        print(f"== gpu-smoke {name}", flush=True)
        t0 = time.perf_counter()
        try:
            res = globals()[f"part_{name}"](ctx)
            report[name] = {"status": "ok", **res}
            print(json.dumps(res, indent=1, default=str), flush=True)
        except Skip as e:
            report[name] = {"status": "skip", "reason": str(e)}
            print(f"  skip: {e}", flush=True)
        except Exception as e:  # report and go on: one smoke run should show every problem
            failed = True
            report[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
            print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
            if name == "install":
                break
        report[name]["seconds"] = round(time.perf_counter() - t0, 1)
    (Path(args.out) / "gpu-smoke.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("== gpu-smoke summary: " + ", ".join(f"{k} {v['status']}" for k, v in report.items()), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
