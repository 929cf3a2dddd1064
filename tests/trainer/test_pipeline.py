"""``training.pipeline``: TorchRec's sparse-dist pipeline against one step at a time,
on a real 2-process gloo world (tests/trainer/pipeline_ranks.py: TorchRec DMP, FBGEMM
fused row-wise AdaGrad, tables sharded over both ranks, whole runs with evaluation,
divergence checks and checkpoints). Same seed, same per-pass NE and the same final
embeddings and dense weights, for the baseline and for each regularizer that acts
in the step or between passes; and the spec's choices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.net import free_port
from tests.trainer.two_ranks import SPEC
from trainer.errors import SpecError
from trainer.pipeline import resolve
from trainer.spec import parse_spec

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
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    port = str(free_port())
    logs = [open(out / f"rank_{r}.log", "w") for r in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(r), "2", port, str(out / "jobs.json"), str(out)],
            cwd=REPO,
            env=env,
            stdout=logs[r],
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    if codes != [0, 0]:
        tails = "\n".join((out / f"rank_{r}.log").read_text()[-3000:] for r in range(2))
        pytest.fail(f"two-rank run failed with exit codes {codes}:\n{tails}")
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


def test_spec_choices() -> None:
    spec = parse_spec(SPEC)
    assert spec.training.pipeline == "auto"
    assert resolve(spec, torch.device("cpu")) == "none"  # measured not to pay on the CPU
    assert resolve(spec, torch.device("cuda", 0)) == "sparse_dist"
    for mode in MODES:
        s = parse_spec({**SPEC, "training": {"pipeline": mode}})
        assert resolve(s, torch.device("cpu")) == resolve(s, torch.device("cuda", 0)) == mode
    # every regularizer stays exact under the pipeline: none is refused with it
    every = [r for regs in VARIANTS.values() for r in regs]
    every.append({"type": "const_norm", "c": 0.1})
    for r in every:
        parse_spec({**SPEC, "training": {"pipeline": "sparse_dist", "num_passes": 2}, "regularizers": [r]})
    with pytest.raises(SpecError, match=r"training\.pipeline"):
        parse_spec({**SPEC, "training": {"pipeline": "semi_sync"}})


@pytest.mark.parametrize("mode", MODES)
def test_no_host_sync_per_step_in_trainer_code(tmp_path, monkeypatch, mode: str) -> None:
    """The step loop's own code (trainer/: the step, loss and NE accumulation, the
    non-finite-loss watch) reads no tensor on the host per step: every read (``item``,
    ``float``, ``bool``, ``tolist``, ``cpu`` ...) from trainer/ happens at report points
    or at the pass end, never once per step. (On CUDA each would be a device sync; the
    CPU run checks the call sites. TorchRec's own reads in the input distribution, the
    splits the all-to-all needs on the host, are what the pipeline overlaps.)"""
    from collections import Counter

    from tests.trainer.specs import tiny_spec_dict
    from trainer.loop import LocalSession, Trainer

    d = tiny_spec_dict(
        data={"synthetic": {"examples_per_day": 8000, "num_users": 500, "num_ads": 200}, "batch_size": 256},
        training={"num_passes": 1, "pipeline": mode},
        metrics={"window_size": 1024, "report_every_steps": 1000},
    )
    tr = Trainer(parse_spec(d), LocalSession(tmp_path), tmp_path)
    sites: Counter = Counter()
    root = str(REPO / "trainer")

    def counted(name: str) -> None:
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(root):
                sites[(caller, sys._getframe(1).f_lineno, name)] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"):
        counted(name)
    tr.regs.on_pass_start(0, tr.dmp, tr.dense_opt)
    tr._train_pass(0, 0)
    monkeypatch.undo()
    steps = tr.data.steps_per_pass
    assert steps >= 30
    assert sites  # the pass end's reads (NE summary, divergence check) were seen: the count works
    per_step = {site: n for site, n in sites.items() if n >= steps}
    assert not per_step, per_step


def test_resume_inside_a_pipelined_pass(tmp_path) -> None:
    """A mid-pass checkpoint taken while the pipeline holds the next batches in flight
    resumes exactly: a run stopped after it and resumed (pipeline again) ends with the
    per-pass NE and weights of the run that was never stopped."""
    from tests.trainer.specs import tiny_spec_dict
    from trainer.loop import LocalSession, Trainer

    d = tiny_spec_dict(
        training={"num_passes": 2, "pipeline": "sparse_dist", "checkpoint_every_steps": 5, "seed": 4},
        regularizers=[{"type": "sparse_dropout", "p": 0.2}, {"type": "max_norm", "c": 0.05}],
    )
    spec = parse_spec(d)

    class Stop(Exception):
        pass

    class StopAfterMidPass(LocalSession):
        def report(self, metrics, checkpoint_dir) -> None:
            super().report(metrics, checkpoint_dir)
            if metrics.get("step_in_pass") == 5 and metrics.get("pass") == 1:
                raise Stop

    def weights(t: Trainer) -> dict[str, torch.Tensor]:
        return {
            k: torch.cat([s.tensor for s in v.local_shards()]) if hasattr(v, "local_shards") else v
            for k, v in t.dmp.state_dict().items()
        }

    whole = Trainer(spec, LocalSession(tmp_path / "whole"), tmp_path / "whole")
    want = whole.run()
    stopped = Trainer(spec, StopAfterMidPass(tmp_path / "stopped"), tmp_path / "stopped")
    with pytest.raises(Stop):
        stopped.run()
    resumed = Trainer(spec, LocalSession(tmp_path / "stopped"), tmp_path / "stopped")
    got = resumed.run()
    for a, b in zip(want, got, strict=True):
        for key in ("train_ne", "test_ne", "global_step"):
            assert _close(a[key], b[key]), (a["pass"], key, a[key], b[key])
    wa, wb = weights(whole), weights(resumed)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=0, msg=k)
