"""A study trains each run once to its max passes and reads every pass count from the
per-pass results: that is only right if passes 1..k of an n-pass run equal a k-pass run
(same seed: same init, data order, regularizer draws and per-pass schedule)."""

from __future__ import annotations

import pytest

from tests.trainer.specs import tiny_spec_dict
from trainer.loop import LocalSession, Trainer
from trainer.spec import parse_spec

REGS = [{"type": "sse_se", "p": 0.05}, {"type": "lr_schedule", "sparse": [1.0, 0.5]}]
KEYS = ("train_ne", "test_ne", "test_calibration", "test_auc", "test_ne_by_stratum", "global_step")


def _run(tmp_path, passes: int) -> list[dict]:
    spec = parse_spec(tiny_spec_dict(training={"num_passes": passes, "seed": 3}, regularizers=REGS))
    d = tmp_path / f"p{passes}"
    return Trainer(spec, LocalSession(d), d).run()


def test_passes_one_to_k_of_a_longer_run_equal_a_k_pass_run(tmp_path):
    short = _run(tmp_path, 2)
    long = _run(tmp_path, 3)
    assert len(short) == 2 and len(long) == 3
    for a, b in zip(short, long[:2], strict=True):
        for k in KEYS:
            assert a[k] == b[k], (k, a[k], b[k])
    assert long[2]["test_ne"] != pytest.approx(long[1]["test_ne"], abs=1e-9)  # a third pass did train
