"""Smoke test of the benchmark harness at tiny size (not timed: figures are not checked
against anything, only that every figure is there, finite and positive)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

MAIN_PATHS = [
    "ceiling",
    "kernel",
    "baseline",
    "peer",
    "trainer_prebuilt",
    "trainer_nometrics",
    "trainer",
    "loader",
]
CEILING_KEYS = [
    "memcpy_bytes_per_s",
    "bytes_per_example",
    "bandwidth_bound_examples_per_s",
    "gather_lookups_per_s",
    "gather_examples_per_s",
]
RATIOS = [
    "trainer_prebuilt_vs_peer",
    "trainer_vs_peer",
    "peer_vs_kernel",
    "trainer_vs_kernel",
    "trainer_vs_ceiling",
    "kernel_vs_ceiling",
    "trainer_vs_baseline",
    "baseline_vs_kernel",
    "trainer_prebuilt_vs_kernel",
    "trainer_nometrics_vs_kernel",
    "trainer_vs_trainer_nometrics",
    "trainer_vs_trainer_prebuilt",
    "loader_vs_trainer",
]
MEMORY = ["estimate_bytes", "peak_rss_bytes", "peak_vs_estimate", "rss_before_bytes", "build_increase_bytes"]
SCALING = [
    "ceiling_examples_per_s",
    "kernel_examples_per_s",
    "trainer_examples_per_s",
    "trainer_vs_kernel",
    "kernel_vs_ceiling",
    "trainer_vs_ceiling",
    "estimate_bytes",
]


def _positive(x, where: str) -> None:
    assert isinstance(x, (int, float)) and not isinstance(x, bool), f"{where}: {x!r} is not a number"
    assert math.isfinite(x) and x > 0, f"{where}: {x!r} is not finite and positive"


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> tuple[dict, Path]:
    d = tmp_path_factory.mktemp("bench")
    out, md = d / "bench.json", d / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.cli",
            "bench",
            "--tiny",
            "--skip-ray",
            "--scaling",
            "--out",
            str(out),
            "--markdown",
            str(md),
        ],
        cwd=REPO,
        # an in-process test earlier in the session set MASTER_PORT for its own gloo
        # group (still bound by this process): the bench must pick its own port
        env={k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "examples/s" in proc.stdout and "Targets" in proc.stdout
    return json.loads(out.read_text()), md


def test_every_figure_finite_and_positive(result) -> None:
    res, _ = result
    meta = res["meta"]
    for k in ("cores", "torch_threads"):
        _positive(meta[k], f"meta.{k}")
    assert meta["date"] and meta["command"].startswith("rectrain bench")
    assert meta["workload"]["tables"] == 26 and meta["workload"]["dense"] == 13
    for k in CEILING_KEYS:
        _positive(res["ceiling"][k], f"ceiling.{k}")
    main = res["main"]
    for name in MAIN_PATHS:
        p = main["paths"][name]
        _positive(p["examples_per_s"], f"{name}.examples_per_s")
        for i, v in enumerate(p["per_round_examples_per_s"]):
            _positive(v, f"{name}.round{i}")
    for k in RATIOS:
        _positive(main["ratios"][k], f"ratios.{k}")
    for k in MEMORY:
        _positive(main["memory"][k], f"memory.{k}")
    _positive(main["metrics_share"], "metrics_share")
    for k in ("kernel", "model_overhead", "loader", "metrics", "unattributed"):
        assert math.isfinite(res["breakdown"][k]), k  # differences of noisy ratios: may be <= 0 at tiny size
    eq = main["peer_equal_work"]  # same model, optimizers and batches: same losses
    assert eq["steps"] >= 2 and eq["max_rel_diff"] < 1e-4, eq
    assert main["profile"] and all(r["self_cpu_ms_per_step"] >= 0 for r in main["profile"])
    axes = {s["axis"] for s in res["scaling"]}
    assert axes == {"rows", "dim", "batch"}
    for s in res["scaling"]:
        for k in SCALING:
            _positive(s[k], f"scaling[{s['axis']}].{k}")
    names = {t["name"] for t in res["targets"]}
    assert names == {
        "trainer_prebuilt_vs_peer",
        "trainer_vs_kernel",
        "trainer_vs_baseline",
        "metrics_share",
        "memory_vs_estimate",
        "trainer_vs_ceiling",
    }
    for t in res["targets"]:
        _positive(t["value"], f"target.{t['name']}")
        assert isinstance(t["met"], bool)
    assert "ray" not in res  # --skip-ray


def test_markdown_section_between_markers(result) -> None:
    _, md = result
    text = md.read_text()
    assert "keep me" in text  # other engineers' sections stay
    assert text.count("<!-- bench:harness:start -->") == 1 and text.count("<!-- bench:harness:end -->") == 1
    section = text.split("<!-- bench:harness:start -->")[1].split("<!-- bench:harness:end -->")[0]
    assert (
        "rectrain bench --tiny" in section
        and "## Benchmark harness" in text
        and "cores" in section
        and "| trainer |" in section
    )


def test_cli_registers_bench() -> None:
    from trainer.cli import build_parser

    args = build_parser().parse_args(
        [
            "bench",
            "--tiny",
            "--skip-ray",
            "--rows",
            "1000",
            "--dim",
            "8",
            "--batch",
            "64",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--no-scaling",
        ]
    )
    from bench.cli import config_from_args

    cfg = config_from_args(args, ["--tiny"])
    assert (cfg.workload.rows, cfg.workload.dim, cfg.workload.batch, cfg.steps) == (1000, 8, 64, 2)
    assert cfg.skip_ray and not cfg.scaling and cfg.device == "cpu"
