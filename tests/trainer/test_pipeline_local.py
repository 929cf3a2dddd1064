"""``training.pipeline`` in one process (world size 1, real DMP + FBGEMM): the spec's
choices, no per-step host read in the step loop's own code, an exact resume inside a
pipelined pass, divergence caught at the same step. The 2-rank equality of pipeline and
plain steps per regularizer is tests/trainer/test_pipeline.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.trainer.test_pipeline import MODES, VARIANTS, _close
from tests.trainer.two_ranks import SPEC
from trainer.errors import SpecError
from trainer.pipeline import resolve
from trainer.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]


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


def test_divergence_is_caught_at_the_same_step(tmp_path) -> None:
    """``on_divergence: fail`` under the pipeline: the run stops with the same "diverged at
    step N (loss = ...)" as one step at a time (the non-finite-loss watch sees every step's
    loss; the check runs at report points only)."""
    from tests.hardening.test_divergence import _diverging
    from trainer.errors import DivergedError
    from trainer.loop import LocalSession, Trainer

    messages = {}
    for mode in MODES:
        d = _diverging("fail")
        d["training"] = {**d["training"], "pipeline": mode}
        t = Trainer(parse_spec(d), LocalSession(tmp_path / mode), tmp_path / mode)
        with pytest.raises(DivergedError) as e:
            t.run()
        messages[mode] = e.value.message
    assert messages["sparse_dist"] == messages["none"]
    assert messages["none"].startswith("diverged at step ")
