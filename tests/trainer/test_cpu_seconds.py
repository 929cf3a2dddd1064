"""Each pass reports its training CPU time (``cpu_seconds``, summed over the workers)
and ``cpu_seconds_per_example``: here one in-process worker (the 2-rank sum is in
tests/trainer/test_two_ranks.py, the Ray worker's in tests/trainer/test_ray_train.py)."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.specs import tiny_spec_dict
from trainer.loop import LocalSession, Trainer
from trainer.spec import parse_spec


def test_one_worker_pass_reports_cpu_seconds_consistent_with_its_wall_time(tmp_path):
    spec = parse_spec(tiny_spec_dict(training={"num_passes": 1}))
    passes = Trainer(spec, LocalSession(tmp_path), tmp_path).run()
    p = passes[0]
    cpu, wall = p["cpu_seconds"], p["train_seconds"]
    assert cpu > 0 and wall > 0
    # at most every intra-op thread plus the prefetching loader busy the whole pass
    # (slack for timer granularity and torch's helper threads)
    assert cpu <= wall * (torch.get_num_threads() + 1) * 1.25 + 0.05, (cpu, wall)
    assert p["cpu_seconds_per_example"] == pytest.approx(cpu / p["train_examples"])
    # the same span as examples_per_s
    assert p["examples_per_s"] == pytest.approx(p["train_examples"] / wall)


def test_mid_pass_checkpoints_leave_the_passs_cpu_seconds_alone(tmp_path):
    # a mid-pass checkpoint's timer once overwrote the pass's CPU clock: cpu_seconds
    # came out as process time minus a wall-clock reading
    spec = parse_spec(tiny_spec_dict(training={"num_passes": 1, "checkpoint_every_steps": 3}))
    t = Trainer(spec, LocalSession(tmp_path), tmp_path)
    p = t.run()[0]
    assert t.timings["checkpoint_s"] > 0  # mid-pass checkpoints were taken
    cpu, wall = p["cpu_seconds"], p["train_seconds"]
    assert 0 < cpu <= wall * (torch.get_num_threads() + 1) * 1.25 + 0.05, (cpu, wall)
