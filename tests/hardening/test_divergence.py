"""Issue 17, point 4: a diverging job stops as failed with "diverged at step N (loss = nan)"
(``training.on_divergence: fail``), or goes on when asked (``continue``)."""

from __future__ import annotations

import pytest

from tests.trainer.specs import tiny_spec_dict
from trainer.errors import DivergedError
from trainer.loop import LocalSession, Trainer
from trainer.spec import parse_spec


class ListSink:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def emit(self, event: dict) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def _diverging(on_divergence: str) -> dict:
    # the case: sparse lr 100 with SGD dense steps of lr 100 blows up in a few steps
    return tiny_spec_dict(
        training={
            "num_passes": 2,
            "on_divergence": on_divergence,
            "sparse_optimizer": {"lr": 100.0},
            "dense_optimizer": {"type": "sgd", "lr": 100.0},
        },
        data={
            "synthetic": {"examples_per_day": 4000, "num_users": 500, "num_ads": 200, "signal_scale": 50.0}
        },
        metrics={"window_size": 1024, "report_every_steps": 2},
    )


def test_diverging_job_fails_with_the_step_and_loss(tmp_path):
    spec = parse_spec(_diverging("fail"))
    sink = ListSink()
    t = Trainer(spec, LocalSession(tmp_path), tmp_path, sink=sink)
    with pytest.raises(DivergedError) as e:
        t.run()
    msg = e.value.message
    assert msg.startswith("diverged at step "), msg
    assert "(loss = nan)" in msg or "(loss = inf)" in msg or "(NE = nan)" in msg, msg
    assert "training.on_divergence" in msg
    failed = [ev for ev in sink.events if ev.get("phase") == "failed"]
    assert failed and failed[-1]["message"].startswith("diverged at step")
    # never a finished run with null metrics
    assert not any(ev.get("phase") == "finished" for ev in sink.events)
    assert t.passes == [] or all(p["train_ne"] is not None for p in t.passes)


def test_on_divergence_continue_keeps_training(tmp_path):
    spec = parse_spec(_diverging("continue"))
    sink = ListSink()
    t = Trainer(spec, LocalSession(tmp_path), tmp_path, sink=sink)
    t.run()
    assert any(ev.get("phase") == "diverged" for ev in sink.events)
    assert any(ev.get("phase") == "finished" for ev in sink.events)
