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
import torch

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
MEMORY = [
    "estimate_bytes",
    "full_estimate_bytes",
    "increase_vs_full_estimate",
    "peak_rss_bytes",
    "peak_vs_estimate",
    "rss_before_bytes",
    "build_increase_bytes",
]
SCALING = [
    "ceiling_examples_per_s",
    "kernel_examples_per_s",
    "trainer_examples_per_s",
    "trainer_vs_kernel",
    "kernel_vs_ceiling",
    "trainer_vs_ceiling",
    "estimate_bytes",
    "full_estimate_bytes",
]


def _positive(x, where: str) -> None:
    assert isinstance(x, (int, float)) and not isinstance(x, bool), f"{where}: {x!r} is not a number"
    assert math.isfinite(x) and x > 0, f"{where}: {x!r} is not finite and positive"


def _bench(args: list[str], d: Path, markdown: Path | None = None) -> dict:
    """``rectrain bench ARGS`` in a subprocess; its JSON results and stdout."""
    out = d / "bench.json"
    md = ["--markdown", str(markdown)] if markdown else ["--no-markdown"]
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "bench", *args, "--out", str(out), *md],
        cwd=REPO,
        # an in-process test earlier in the session set MASTER_PORT for its own gloo
        # group (still bound by this process): the bench must pick its own port
        env={k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"json": json.loads(out.read_text()), "stdout": proc.stdout}


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> tuple[dict, Path]:
    d = tmp_path_factory.mktemp("bench")
    md = d / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    r = _bench(["--tiny", "--skip-ray", "--scaling"], d, markdown=md)
    assert "examples/s" in r["stdout"] and "Targets" in r["stdout"]
    return r["json"], md


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
    mem = main["memory"]  # the target's estimate is the spec's full one, embeddings one part of it
    assert mem["full_estimate_bytes"] == sum(mem["estimate_parts"].values()) > mem["estimate_bytes"]
    assert mem["estimate_parts"]["embeddings"] == mem["estimate_bytes"]
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
    from cli.main import build_parser

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


def test_concat_interaction_runs_every_path_but_the_peer(tmp_path) -> None:
    """``--interaction concat``: trainer and plain PyTorch on the concat model, the peer
    (TorchRec's DLRM: dot only) skipped with the reason printed."""
    r = _bench(
        [
            "--tiny",
            "--skip-ray",
            "--no-scaling",
            "--no-profile",
            "--no-huge-pages",
            "--interaction",
            "concat",
            "--over-arch",
            "8",
        ],
        tmp_path,
    )
    res, out = r["json"], r["stdout"]
    main = res["main"]
    assert res["meta"]["workload"]["interaction"] == "concat"
    assert res["meta"]["workload"]["over_arch"] == [8]
    assert "peer" not in main["paths"] and "dot interaction only" in main["peer_skipped"]
    assert "peer skipped" in out and "concat interaction" in out
    for k in ("trainer_vs_kernel", "trainer_vs_baseline", "trainer_prebuilt_vs_kernel"):
        _positive(main["ratios"][k], f"ratios.{k}")
    assert "trainer_prebuilt_vs_peer" not in {t["name"] for t in res["targets"]}


def test_plain_pytorch_model_has_rectrains_layer_shapes_for_each_interaction() -> None:
    """The baseline mirrors rectrain's DLRM: the same over-arch input width (dot: the
    Gram matrix's upper triangle; concat: every pooled embedding) and the same logits shape."""
    from torch import nn

    from bench.baseline import PlainDLRM
    from bench.paths import Workload, make_spec
    from trainer.model.dlrm import DLRM

    for interaction in ("dot", "concat"):
        w = Workload(rows=50, dim=8, batch=4, dense_arch=(8,), over_arch=(8,), interaction=interaction)
        ours = DLRM(make_spec(w, 2))
        plain = PlainDLRM(w)
        first = [m for m in ours.over_arch.modules() if isinstance(m, nn.Linear)][0]
        assert plain.over_arch[0].in_features == first.in_features, interaction
        idx = torch.randint(0, w.rows, (w.tables * w.batch,))
        logits = plain(torch.randn(w.batch, w.dense), idx, torch.arange(w.batch))
        assert logits.shape == (w.batch,)


@pytest.mark.ray
def test_ray_rows_strong_scaling_and_worker_memory(ray_session) -> None:
    """The Ray rows at tiny size on the session cluster: 1 worker at batch B, 2 at B/2
    (same global batch), CPU-seconds per example of pass 2 from the trainer's results,
    each worker's peak RSS net of its RSS before the Trainer; the targets and the text."""
    from bench.config import tiny_config
    from bench.ray_runs import ray_scaling, run_ray
    from bench.report import format_text
    from bench.targets import check_targets

    cfg = tiny_config(ray_steps=3)
    ray = {f"w{k}": run_ray(cfg.workload, cfg, k, log=lambda _: None) for k in (1, 2)}
    for k, r in ray.items():
        assert r["global_batch"] == cfg.workload.batch, k
        assert r["batch_per_worker"] * r["workers"] == cfg.workload.batch
        assert r["torch_threads"] == [1], r  # scaling.cpus_per_worker 1
        for f in (
            "cpu_seconds_per_example",
            "worker_peak_rss_bytes",
            "worker_rss_before_trainer_bytes",
            "worker_peak_increase_bytes",
            "worker_full_estimate_bytes",
            "worker_increase_vs_full_estimate",
        ):
            _positive(r[f], f"ray.{k}.{f}")
        assert r["worker_peak_increase_bytes"] < r["worker_peak_rss_bytes"]
    sc = ray_scaling(ray)
    assert sc is not None
    _positive(sc["cpu_per_example_2w_vs_1w"], "cpu_per_example_2w_vs_1w")
    assert sc["cpu_per_example_2w_vs_1w"] == pytest.approx(
        ray["w2"]["cpu_seconds_per_example"] / ray["w1"]["cpu_seconds_per_example"]
    )
    # the targets table and the report, on a result with a (fake, pure-logic) main point
    res = json.loads(json.dumps({"ray": ray, "ray_scaling": sc}))
    res["main"] = {
        "ratios": {"trainer_vs_kernel": 0.5, "trainer_vs_baseline": 2.0, "trainer_vs_ceiling": 0.1},
        "metrics_share": 0.01,
        "memory": {"increase_vs_full_estimate": 1.1},
    }
    targets = {t["name"]: t for t in check_targets(res)}
    assert targets["scaling_cpu_per_example"]["value"] == sc["cpu_per_example_2w_vs_1w"]
    worst = max(r["worker_increase_vs_full_estimate"] for r in ray.values())
    assert targets["ray_memory_vs_estimate"]["value"] == worst
    for r in res["ray"].values():
        r.update(vs_kernel=1.0, vs_ceiling=1.0)
    lines = [ln for ln in format_text(_render_ready(res)).splitlines() if "strong scaling" in ln]
    assert lines and "2 workers / 1" in lines[0]


def _render_ready(res: dict) -> dict:
    """A minimal complete result around the Ray part, for the text renderer."""
    from bench.paths import Workload

    w = {**Workload().asdict(), "ids": "-"}
    res = dict(res)
    res["meta"] = {"workload": w, "rounds": 1, "steps": 1, "cores": 2, "torch_threads": 2, "device": "cpu"}
    res["ceiling"] = {
        "impl": "-",
        "gather_lookups_per_s": 1.0,
        "gather_examples_per_s": 1.0,
        "memcpy_bytes_per_s": 1.0,
        "bytes_per_example": 1,
        "bandwidth_bound_examples_per_s": 1.0,
    }
    res["main"] = {
        **res["main"],
        "paths": {},
        "memory": {
            "peak_increase_bytes": 1,
            "estimate_bytes": 1,
            "increase_vs_estimate": 1.0,
            "full_estimate_bytes": 1,
            "increase_vs_full_estimate": 1.0,
            "peak_rss_bytes": 1,
            "build_increase_bytes": 1,
        },
        "ratios": {**res["main"]["ratios"], "trainer_vs_trainer_nometrics": 1.0},
    }
    res["breakdown"] = {"kernel": 0, "model_overhead": 0, "loader": 0, "metrics": 0, "unattributed": 0}
    res["targets"] = []
    return res


def test_compile_flag_reaches_rectrains_spec_only() -> None:
    """``--compile``: rectrain's paths get training.compile (the Trainer compiles its
    dense part in the warm-up); the workload records it for the report."""
    from bench.cli import config_from_args
    from bench.paths import Workload, make_spec
    from cli.main import build_parser

    cfg = config_from_args(
        build_parser().parse_args(["bench", "--tiny", "--compile"]), ["--tiny", "--compile"]
    )
    assert cfg.workload.compile is True and cfg.workload.asdict()["compile"] is True
    assert make_spec(cfg.workload, 4).training.compile is True
    assert make_spec(Workload(rows=50, dim=8, batch=4), 4).training.compile is False
