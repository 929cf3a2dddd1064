"""NE wiring: torchrec.metrics against a direct numpy computation on the same predictions."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tests.trainer.specs import tiny_spec_dict
from trainer.collectives import Collectives
from trainer.data.batch import STRATA
from trainer.loop import LocalSession, Trainer
from trainer.metrics import ne
from trainer.metrics.auc import ExactAUC
from trainer.spec import parse_spec


def numpy_ne(p, y, w):
    p = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    y, w = y.astype(np.float64), w.astype(np.float64)
    logloss = -(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum()
    ctr = (w * y).sum() / w.sum()
    entropy = -(ctr * np.log(ctr) + (1 - ctr) * np.log(1 - ctr))
    return logloss / entropy


class _B:  # the fields ne.update reads
    def __init__(self, y, w, s):
        self.labels, self.weights, self.strata = y, w, s


def test_ne_calibration_and_strata_match_numpy():
    rng = np.random.default_rng(0)
    n, bs = 3000, 500
    logits = rng.normal(size=n).astype(np.float32)
    p = 1 / (1 + np.exp(-logits))
    y = (rng.random(n) < p * 0.8).astype(np.float32)
    w = rng.choice([0.0, 1.0, 2.0], size=n).astype(np.float32)
    s = rng.integers(0, 3, size=n)
    m = ne.make_metric_module(
        window_size=n,
        batch_size=bs,
        world_size=1,
        rank=0,
        device=torch.device("cpu"),
        with_auc=True,
        with_strata=True,
    )
    for i in range(0, n, bs):
        sl = slice(i, i + bs)
        ne.update(
            m,
            torch.from_numpy(logits[sl]),
            _B(torch.from_numpy(y[sl]), torch.from_numpy(w[sl]), torch.from_numpy(s[sl])),
        )
    out = ne.summarize(m.compute())
    assert out["lifetime_ne"] == pytest.approx(numpy_ne(p, y, w), rel=1e-5)
    assert out["lifetime_calibration"] == pytest.approx((w * p).sum() / (w * y).sum(), rel=1e-5)
    for k, name in enumerate(STRATA):
        sel = s == k
        assert out["ne_by_stratum"][name] == pytest.approx(numpy_ne(p[sel], y[sel], w[sel]), rel=1e-4)
    assert 0.5 < out["window_auc"] < 1.0


def test_trainer_test_ne_equals_numpy_on_its_own_predictions(tmp_path):
    spec = parse_spec(tiny_spec_dict())
    t = Trainer(spec, LocalSession(tmp_path), tmp_path)
    for batch in t.data.train_batches(0):
        t.train_step(batch)
    got = t.evaluate()
    preds, labels, weights = [], [], []
    t.dmp.eval()
    with torch.no_grad():
        for b in t.data.eval_batches():
            preds.append(torch.sigmoid(t.dmp(b.dense, b.sparse)).numpy())
            labels.append(b.labels.numpy())
            weights.append(b.weights.numpy())
    p, y, w = map(np.concatenate, (preds, labels, weights))
    assert w.sum() == len(t.data.test)  # padding rows carry weight 0
    assert got["lifetime_ne"] == pytest.approx(numpy_ne(p, y, w), rel=1e-5)
    assert got["examples_by_stratum"] and sum(got["examples_by_stratum"].values()) == len(t.data.test)
    assert got["lifetime_ne"] < 1.0  # it learned something in one pass
    # AUC over every test row (4000 > metrics.window_size 1024), exactly sklearn's
    assert len(t.data.test) > spec.metrics.window_size
    assert got["auc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-9)


def test_exact_auc_matches_sklearn_on_a_set_larger_than_any_window():
    """4.2M rows (more than the 4M-example window the test AUC used to be cut to), tied
    predictions and weights (0 for padding rows): the whole set counts, ties as half."""
    rng = np.random.default_rng(1)
    n, bs = 4_200_000, 1 << 16
    y = (rng.random(n) < 0.2).astype(np.float32)
    p = np.round(np.clip(0.2 + 0.1 * (y - 0.2) + 0.15 * rng.normal(size=n), 0, 1), 2).astype(np.float32)
    w = rng.choice([0.0, 1.0, 2.0], size=n, p=[0.1, 0.7, 0.2]).astype(np.float32)
    # the first rows alone score differently: a window of the last rows would be caught
    p[:1_000_000] = np.where(y[:1_000_000] > 0, 0.9, 0.1)
    auc = ExactAUC(Collectives("cpu"))
    for i in range(0, n, bs):
        auc.update(*(torch.from_numpy(a[i : i + bs]) for a in (p, y, w)))
    want = roc_auc_score(y, p, sample_weight=w)
    assert auc.compute() == pytest.approx(want, abs=1e-9)
    assert abs(roc_auc_score(y[-4_000_000:], p[-4_000_000:], sample_weight=w[-4_000_000:]) - want) > 0.01
