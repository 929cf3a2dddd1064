"""``training.pipeline``: TorchRec's sparse-dist pipeline against one step at a time,
on a real 2-process gloo world (tests/trainer/pipeline_ranks.py: TorchRec DMP, FBGEMM
fused row-wise AdaGrad, tables sharded over both ranks, whole runs with evaluation,
divergence checks and checkpoints). Same seed, same per-pass NE and the same final
embeddings and dense weights, for the baseline and for each regularizer that acts
in the step or between passes (the one-process checks: test_pipeline_local.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.gloo_ranks import run_two_ranks
from tests.trainer.two_ranks import SPEC

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("pipeline_ranks.py")
STEPS_PER_PASS = 4  # 512 examples / 2 ranks / batch 64
PASSES = 2

# name -> regularizers: each acts in the step (KJT rewrites, TBE hooks, gradient hook,
# post-step maps, shrink, loss term) or between passes (reset, schedules)
VARIANTS: dict[str, list[dict]] = {
    "baseline": [],
    "sse_se": [{"type": "sse_se", "p": 0.3}],
    "sparse_dropout": [{"type": "sparse_dropout", "p": 0.3}],
    "freq_decay": [{"type": "freq_decay", "alpha": 0.05}],
    "sparse_l2": [{"type": "sparse_l2", "weight": 0.05}],  # CPU: the exact gradient-hook fallback
    "max_norm": [{"type": "max_norm", "c": 0.05}],
    "embedding_reset": [{"type": "embedding_reset", "every": 1}],
    "schedules": [
        {"type": "lr_schedule", "sparse": [1.0, 0.5], "dense": [0.5, 1.0]},
        {"type": "freeze", "from_pass": 1, "what": "dense"},
    ],
    "others": [
        {"type": "sparse_l1", "weight": 0.01},
        {"type": "shrink", "s": 0.1, "every_steps": 2},
        {"type": "max_entropy", "weight": 0.01},
        {"type": "dropout", "p": 0.1},
    ],
}
MODES = ("none", "sparse_dist")


def job_spec(regularizers: list[dict], mode: str) -> dict:
    return {
        **SPEC,
        "training": {
            "num_passes": PASSES,
            "seed": 11,
            "pipeline": mode,
            # a mid-pass checkpoint while the pipeline holds the next batches in flight
            "checkpoint_every_steps": 3,
        },
        # divergence checks (and metric syncs) inside the pass
        "metrics": {"window_size": 128, "report_every_steps": 2},
        "scaling": {"num_workers": 2},
        "regularizers": regularizers,
    }


@pytest.fixture(scope="module")
def dumps(tmp_path_factory) -> dict[tuple[str, str], list[dict]]:
    """(variant, mode) -> both ranks' dumps, from one 2-process run of every job."""
    out = tmp_path_factory.mktemp("pipeline")
    jobs = [
        {"name": f"{name}-{mode}", "spec": job_spec(regs, mode)}
        for name, regs in VARIANTS.items()
        for mode in MODES
    ]
    (out / "jobs.json").write_text(json.dumps(jobs))
    run_two_ranks(SCRIPT, out, str(out / "jobs.json"), str(out))
    return {
        (name, mode): [torch.load(out / f"{name}-{mode}_rank_{r}.pt", weights_only=False) for r in range(2)]
        for name in VARIANTS
        for mode in MODES
    }


def _close(a: float | None, b: float | None) -> bool:
    return a is None and b is None or (a is not None and b is not None and abs(a - b) <= 1e-6)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_pipeline_matches_plain_steps(dumps, name: str) -> None:
    plain, piped = dumps[(name, "none")], dumps[(name, "sparse_dist")]
    for r in range(2):
        # the pipeline really ran: every lookup of every step went through TorchRec's
        # pipelined forward (and none without it)
        assert plain[r]["pipelined_lookups"] == 0
        assert piped[r]["pipelined_lookups"] == STEPS_PER_PASS * PASSES
        pa, pb = plain[r]["passes"], piped[r]["passes"]
        assert len(pa) == len(pb) == PASSES
        if r == 0:  # the metric values are computed on rank 0
            for x, y in zip(pa, pb, strict=True):
                for key in ("train_ne", "test_ne", "test_auc", "test_calibration"):
                    assert x[key] is not None, (name, key)
                    assert _close(x[key], y[key]), (name, x["pass"], key, x[key], y[key])
                assert x["global_step"] == y["global_step"]
        ta, tb = plain[r]["tables"], piped[r]["tables"]
        assert ta.keys() == tb.keys() and ta
        for k in ta:
            for (oa, wa), (ob, wb) in zip(ta[k], tb[k], strict=True):
                assert oa == ob
                torch.testing.assert_close(wb, wa, atol=1e-6, rtol=0, msg=f"{name}: {k}")
        for k, w in plain[r]["dense"].items():
            torch.testing.assert_close(piped[r]["dense"][k], w, atol=1e-6, rtol=0, msg=f"{name}: {k}")


def test_regularizers_changed_the_run(dumps) -> None:
    """Each variant trains differently from the baseline (its hook really acted)."""
    base = dumps[("baseline", "sparse_dist")][0]["passes"]
    for name in VARIANTS:
        if name != "baseline":
            got = dumps[(name, "sparse_dist")][0]["passes"]
            assert any(abs(a["train_ne"] - b["train_ne"]) > 1e-6 for a, b in zip(base, got, strict=True)), (
                name
            )
