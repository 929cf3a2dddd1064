"""Reference predictors (trainer/references.py): the logistic regression against
scikit-learn, NE against torchrec and a direct computation, the L2 choice on
validation only, the cache, and their place in a run's results and table."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tests.trainer.specs import tiny_spec_dict
from trainer import references as R
from trainer.data.dataset import RankData
from trainer.loop import LocalSession, Trainer
from trainer.metrics import ne
from trainer.report import format_pass_table, summarize_passes
from trainer.results import RunSummary
from trainer.spec import JobSpec


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _spec(**data) -> JobSpec:
    d = tiny_spec_dict(data={"validation_days": [1], "test_days": [2], **data})
    d["data"]["synthetic"] = {**d["data"]["synthetic"], "examples_per_day": 2000}
    return JobSpec.model_validate(d)


def test_logistic_regression_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, d = 600, 40
    x = sp.random(n, d, density=0.15, random_state=1, format="csr", data_rvs=lambda k: rng.integers(1, 3, k))
    w_true = rng.normal(0, 1.5, d)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(x @ w_true - 0.3)))).astype(np.float64)
    for l2 in (1e-3, 3e-2):
        w, b, _ = R.fit_logistic(x, y, l2)
        # sklearn: C * sum(log loss) + ||w||^2 / 2, intercept unpenalised == ours times 1/(n l2)
        ref = LogisticRegression(C=1.0 / (n * l2), tol=1e-12, max_iter=10_000).fit(x, y)
        np.testing.assert_allclose(w, ref.coef_[0], atol=2e-4)
        assert b == pytest.approx(ref.intercept_[0], abs=2e-4)


def test_normalized_entropy_is_torchrecs_ne():
    rng = np.random.default_rng(3)
    n = 1500
    p = rng.uniform(0.02, 0.98, n)
    y = (rng.uniform(size=n) < p).astype(np.float64)
    m = ne.make_metric_module(window_size=n, batch_size=n, world_size=1, rank=0, device=torch.device("cpu"))
    m.update(
        {
            "prediction": torch.tensor(p, dtype=torch.float32),
            "label": torch.tensor(y, dtype=torch.float32),
            "weight": torch.ones(n),
        }
    )
    assert R.normalized_entropy(p, y) == pytest.approx(ne.summarize(m.compute())["lifetime_ne"], rel=1e-6)


def test_references_on_run_data_direct_and_validation_only():
    spec = _spec()
    data = RankData(spec, 0, 1)
    out = R.compute(spec, data)
    c, q = float(data.train.label.astype(np.float64).mean()), float(data.test.label.astype(np.float64).mean())
    direct = -(q * math.log(c) + (1 - q) * math.log(1 - c)) / -(q * math.log(q) + (1 - q) * math.log(1 - q))
    assert out["constant"]["click_rate"] == pytest.approx(c)
    assert out["constant"]["test_ne"] == pytest.approx(direct, rel=1e-9)
    assert out["constant"]["test_auc"] == 0.5
    lr = out["logistic"]
    assert lr["l2_chosen_on"] == "validation"
    curve = lr["selection_ne_by_l2"]
    assert lr["l2"] == float(min(curve, key=curve.__getitem__))
    assert lr["validation_ne"] == pytest.approx(curve[f"{lr['l2']:g}"])
    assert lr["test_ne"] < out["constant"]["test_ne"]  # the ids carry signal on synthetic data
    assert 0.5 < lr["test_auc"] <= 1.0
    # one column per (table, row) the training rows use; the multi-valued history counts its ids
    x = R.design_matrix(data.train, spec.data.sparse_feature_names(), 1, spec.model.hash_size)
    assert x.sum() == sum(int(data.train.lengths[f].sum()) for f in spec.data.sparse_feature_names())
    # the choice is made on validation: other test labels change the test NE, never the choice
    data.test.label = 1.0 - data.test.label
    flipped = R.compute(spec, data)["logistic"]
    assert flipped["l2"] == lr["l2"] and flipped["selection_ne_by_l2"] == curve
    assert flipped["test_ne"] != pytest.approx(lr["test_ne"])


def test_without_validation_the_choice_uses_a_training_holdout():
    spec = _spec(validation_days=[])
    lr = R.compute(spec, RankData(spec, 0, 1))["logistic"]
    assert "training rows" in lr["l2_chosen_on"] and lr["validation_ne"] is None
    assert math.isfinite(lr["test_ne"])


def test_cache_keyed_by_data_not_by_batching(monkeypatch):
    spec = _spec()
    calls = []
    real = R.compute
    monkeypatch.setattr(R, "compute", lambda s, d: calls.append(1) or real(s, d))
    first = R.references(spec)
    again = R.references(spec.model_copy(update={"data": spec.data.model_copy(update={"batch_size": 128})}))
    assert len(calls) == 1 and not first["cached"] and again["cached"]
    assert again["logistic"] == first["logistic"]
    other = spec.model_copy(update={"model": spec.model.model_copy(update={"hash_size": 999})})
    assert R.cache_key(other) != R.cache_key(spec)


def test_summary_table_and_worse_than_constant_warning():
    refs = {
        "constant": {"click_rate": 0.55, "validation_ne": 1.001, "test_ne": 1.0004},
        "logistic": {"l2": 1e-4, "l2_chosen_on": "validation", "validation_ne": 0.92, "test_ne": 0.904},
    }
    passes = [
        {"pass": 0, "val_ne": 1.02, "test_ne": 1.0146, "references": refs},
        {"pass": 1, "val_ne": 1.06, "test_ne": 1.063, "references": refs},
    ]
    s = summarize_passes(passes)
    assert s["references"] == refs and s["pass1_worse_than_constant"] is True
    table = format_pass_table(RunSummary.model_validate(s))
    assert "constant NE (training click rate 0.5500): validation 1.0010  test 1.0004" in table
    assert "logistic regression NE" in table and "test 0.9040" in table
    assert "warning: pass 1 test NE 1.0146 is worse than the constant" in table
    passes[0]["test_ne"] = 0.95
    s = summarize_passes(passes)
    assert s["pass1_worse_than_constant"] is False and "warning" not in format_pass_table(
        RunSummary.model_validate(s)
    )
    assert summarize_passes([{"pass": 0, "test_ne": 0.9}])["pass1_worse_than_constant"] is None


def test_a_run_reports_its_references(tmp_path):
    spec = _spec()
    passes = Trainer(spec, LocalSession(tmp_path), tmp_path).run()
    refs = passes[0]["references"]
    assert refs["constant"]["test_ne"] > 0.99 and refs["logistic"]["test_ne"] < 1.0
    assert all(p["references"] == refs for p in passes)
    assert refs == R.references(spec) | {"cached": refs["cached"]}  # the run filled the cache
