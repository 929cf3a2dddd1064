"""NE wiring: torchrec.metrics against a direct numpy computation on the same predictions."""

import numpy as np
import pytest
import torch

from tests.trainer.specs import tiny_spec_dict
from trainer.data.dataset import STRATA
from trainer.loop import LocalSession, Trainer
from trainer.metrics import ne
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
