"""Validation data and pass selection, and the oracle NE of synthetic data.

Selection is by validation NE only (never by the test days); without validation data
nothing is selected and the last pass is reported. The oracle NE is the NE of the
generator's true click probabilities: no model of the features beats it in expectation.
"""

import numpy as np
import pytest
import torch

from tests.trainer.specs import tiny_spec_dict
from trainer.data.dataset import RankData
from trainer.data.synthetic import SyntheticClicks, click_probability
from trainer.errors import DataError, SpecError
from trainer.loop import LocalSession, Trainer
from trainer.report import format_pass_table, summarize_passes
from trainer.results import RunSummary
from trainer.spec import parse_spec

CONTRACT_PASS_FIELDS = (
    "train_ne",
    "val_ne",
    "val_calibration",
    "val_auc",
    "val_ne_by_stratum",
    "val_examples_by_stratum",
    "test_ne",
    "test_calibration",
    "test_auc",
    "test_ne_by_stratum",
    "test_examples_by_stratum",
    "oracle_val_ne",
    "oracle_test_ne",
)


def _spec(**data):
    return parse_spec(tiny_spec_dict(data=data))


# ----------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    "data, field, days",
    [
        ({"train_days": [0, 1], "validation_days": [1], "test_days": [2]}, "data.validation_days", "[1]"),
        ({"train_days": [0], "validation_days": [2, 3], "test_days": [3]}, "data.test_days", "[3]"),
        ({"train_days": [0, 4], "validation_days": [1], "test_days": [4]}, "data.test_days", "[4]"),
    ],
)
def test_overlapping_days_are_refused_naming_the_days(data, field, days):
    with pytest.raises(SpecError) as e:
        _spec(**data)
    assert field in str(e.value) and days in str(e.value), str(e.value)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_validation_fraction_must_be_a_proper_fraction(bad):
    with pytest.raises(SpecError, match="data.validation_fraction"):
        _spec(validation_fraction=bad)


def test_validation_days_and_fraction_are_exclusive():
    with pytest.raises(SpecError, match="data.validation_fraction.*not both"):
        _spec(validation_days=[2], validation_fraction=0.2)


# ----------------------------------------------------------------------------- data


def test_validation_fraction_holds_out_the_last_rows_of_the_last_training_day():
    spec = _spec(train_days=[0], validation_fraction=0.25, test_days=[1])
    day = next(SyntheticClicks(spec.data.synthetic).read_day(0))
    assert len(day) == 4000
    for world in (1, 2):
        parts = [RankData(spec, r, world) for r in range(world)]
        for r, d in enumerate(parts):
            assert d.train_day_counts == {0: 3000} and d.val_day_counts == {0: 1000}
            rows = np.arange(4000)
            mine = rows[rows % world == r]
            # the part keeps read order: training rows first 3000, validation the last 1000
            np.testing.assert_array_equal(d.train.dense, day.dense[mine[mine < 3000]])
            np.testing.assert_array_equal(d.val.dense, day.dense[mine[mine >= 3000]])
            assert d.val.prob is not None and d.train.prob is None
            # the held-out rows count for nothing in the strata (never trained on)
            uniq, counts = np.unique(day.sparse["ad_id"][0][:3000], return_counts=True)
            np.testing.assert_array_equal(d.stratum_counts[0], uniq)
            np.testing.assert_array_equal(d.stratum_counts[1], counts)
            # training batches only ever draw from the training part
            seen = np.concatenate([b.dense.numpy() for b in d.train_batches(0)])
            held = {x.tobytes() for x in d.val.dense}
            assert not any(x.tobytes() in held for x in seen)
        # every validation row is scored exactly once over the ranks
        w = sum(float(b.weights.sum()) for d in parts for b in d.eval_batches("validation"))
        assert w == 1000


def test_validation_fraction_that_leaves_no_row_is_a_clear_error():
    spec = _spec(train_days=[0], validation_fraction=0.0001, test_days=[1])
    with pytest.raises(DataError, match="data.validation_fraction"):
        RankData(spec, 0, 1)


# ----------------------------------------------------------------------------- selection


def test_selection_uses_validation_never_test():
    passes = [
        {"pass": 0, "val_ne": 0.95, "test_ne": 0.90, "oracle_val_ne": 0.7, "oracle_test_ne": 0.71},
        {"pass": 1, "val_ne": 0.93, "test_ne": 0.94, "oracle_val_ne": 0.7, "oracle_test_ne": 0.71},
        {"pass": 2, "val_ne": 0.96, "test_ne": 0.97, "oracle_val_ne": 0.7, "oracle_test_ne": 0.71},
    ]
    s = summarize_passes(passes)
    assert s["selection"] == "validation" and s["selected_pass"] == 1
    assert s["val_ne_at_selected"] == 0.93 and s["test_ne_at_selected"] == 0.94  # not the min test NE
    assert s["last_pass"] == 2 and s["test_ne_at_last"] == 0.97
    assert s["oracle_val_ne"] == 0.7 and s["oracle_test_ne"] == 0.71
    assert "best" not in str(s).lower()
    table = format_pass_table(RunSummary.model_validate(s))
    rows = table.splitlines()
    assert rows[3].endswith(" *") and not rows[2].endswith("*") and not rows[4].endswith("*")
    assert "val NE" in rows[0]
    assert "selected pass 2 (*, lowest validation NE 0.9300): test NE 0.9400" in table
    assert "oracle NE (true click probabilities): validation 0.7000  test 0.7100" in table


def test_without_validation_data_nothing_is_selected():
    passes = [{"pass": 0, "test_ne": 0.90}, {"pass": 1, "test_ne": 0.94}]
    s = summarize_passes(passes)
    assert s["selection"] == "none" and s["selected_pass"] is None and s["test_ne_at_selected"] is None
    assert s["last_pass"] == 1 and s["test_ne_at_last"] == 0.94
    table = format_pass_table(RunSummary.model_validate(s))
    assert "*" not in table
    assert "no validation data, no pass selected: last pass 2 test NE 0.9400" in table
    assert "oracle" not in table


def test_trainer_scores_validation_and_test_after_every_pass(tmp_path):
    class Sink:
        events: list = []

        def emit(self, e):
            self.events.append(e)

        def close(self):
            pass

    sink = Sink()
    spec = _spec(train_days=[0], validation_days=[1], test_days=[2])
    passes = Trainer(spec, LocalSession(tmp_path), tmp_path, sink=sink).run()
    events = [e for e in sink.events if e["type"] == "pass"]
    assert [e["pass"] for e in events] == [0, 1]
    for e in events:
        for f in CONTRACT_PASS_FIELDS:
            assert e[f] is not None and e[f] != {}, f
        assert sum(e["val_examples_by_stratum"].values()) == 4000
        assert e["val_ne"] != e["test_ne"]  # different days
    s = summarize_passes(passes)
    assert s["selected_pass"] == min(passes, key=lambda p: p["val_ne"])["pass"]
    assert s["oracle_test_ne"] < s["test_ne_at_selected"]


# ----------------------------------------------------------------------------- oracle


def test_click_probability_integrates_the_logit_noise():
    z = np.array([-3.0, 0.0, 2.0])
    eps = np.random.default_rng(0).normal(size=(400_000, 1))
    mc = (1 / (1 + np.exp(-(z + 0.8 * eps)))).mean(axis=0)
    np.testing.assert_allclose(click_probability(z, 0.8), mc, atol=2e-3)
    np.testing.assert_allclose(click_probability(z, 0.0), 1 / (1 + np.exp(-z)))


def _nll(p, y):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_trained_model_never_beats_the_oracle_beyond_sampling_noise(tmp_path):
    """On a large test day: the model's NE minus the oracle NE is never below the
    sampling noise of that difference; the oracle's probabilities are calibrated."""
    spec = parse_spec(
        tiny_spec_dict(
            data={
                "synthetic": {"examples_per_day": 120_000, "num_users": 500, "num_ads": 200},
                "batch_size": 1024,
                "train_days": [0],
                "test_days": [1],
            },
            metrics={"window_size": 4096},
        )
    )
    t = Trainer(spec, LocalSession(tmp_path), tmp_path)
    for step, batch in enumerate(t.data.train_batches(0)):
        t.train_step(batch)
        if step == 80:
            break
    got = t.evaluate("test")
    p, q, y, w = [], [], [], []
    t.dmp.eval()
    with torch.no_grad():
        for b in t.data.eval_batches("test"):
            p.append(torch.sigmoid(t.dmp(b.dense, b.sparse)).numpy())
            q.append(b.probs.numpy())
            y.append(b.labels.numpy())
            w.append(b.weights.numpy())
    p, q, y, w = map(np.concatenate, (p, q, y, w))
    keep = w > 0
    p, q, y = p[keep], q[keep], y[keep].astype(np.float64)
    assert len(y) == 120_000
    ctr = y.mean()
    entropy = -(ctr * np.log(ctr) + (1 - ctr) * np.log(1 - ctr))
    # the trainer's oracle NE is the NE of the true probabilities (through torchrec)
    assert got["oracle_ne"] == pytest.approx(_nll(q, y).mean() / entropy, rel=1e-4)
    # calibrated: the labels were drawn with these probabilities
    assert abs(q.mean() - ctr) < 4 * np.sqrt(ctr * (1 - ctr) / len(y))
    diff = (_nll(p, y) - _nll(q, y)) / entropy
    noise = diff.std() / np.sqrt(len(diff))
    assert diff.mean() > -3 * noise, (diff.mean(), noise)
    assert got["lifetime_ne"] - got["oracle_ne"] > -3 * noise


def test_sse_graph_is_built_from_the_training_rows_only():
    """With validation_fraction, the held-out rows link nothing in the sse_graph."""
    from trainer.data.graph import GraphBuilder

    d = tiny_spec_dict(data={"train_days": [0], "validation_fraction": 0.25, "test_days": [1]})
    d["regularizers"] = [{"type": "sse_graph", "p": 0.2}]
    spec = parse_spec(d)
    source = SyntheticClicks(spec.data.synthetic)
    day = next(source.read_day(0))
    want = GraphBuilder(spec, source)
    want.observe(day.take(np.arange(3000)))
    want = want.build()
    got = RankData(spec, 0, 1).graph
    assert set(got.graphs) == set(want.graphs)
    for f, g in want.graphs.items():
        np.testing.assert_array_equal(got.graphs[f].nodes, g.nodes)
        np.testing.assert_array_equal(got.graphs[f].val_nodes, g.val_nodes)
