"""Real data: MovieLens-100k (shipped inside the recbole wheel on PyPI) loads through the
table source (rating >= 4 as a click, 30-day partitions) and trains to a finite NE."""

import math

import numpy as np
import pytest

from tests.trainer.specs import REPO
from trainer.data.dataset import RankData
from trainer.data.movielens import fetch_ml100k
from trainer.loop import LocalSession, Trainer
from trainer.spec import load_spec


@pytest.fixture(scope="module")
def ml_spec(tmp_path_factory):
    try:
        path = fetch_ml100k(tmp_path_factory.mktemp("ml") / "ml-100k.inter")
    except Exception as e:  # the package registry is part of this project's environment
        pytest.fail(f"could not fetch MovieLens-100k from the recbole wheel: {e}")
    spec = load_spec(REPO / "examples" / "movielens.yaml")
    data = spec.data.model_copy(update={"path": str(path)})
    return spec.model_copy(
        update={"data": data, "training": spec.training.model_copy(update={"num_passes": 1})}
    )


def test_movielens_partitions_and_labels(ml_spec):
    data = RankData(ml_spec, 0, 1)
    total = sum(data.train_day_counts.values()) + sum(data.val_day_counts.values())
    total += sum(data.test_day_counts.values())
    assert 50_000 < total < 100_000  # 100k ratings over ~7 thirty-day partitions
    ctr = float(data.train.label.mean())
    assert 0.4 < ctr < 0.7  # share of ratings >= 4
    assert set(np.unique(data.train.strata)) == {0, 1, 2}


def test_movielens_trains_to_finite_ne(ml_spec, tmp_path):
    t = Trainer(ml_spec, LocalSession(tmp_path), tmp_path)
    (result,) = t.run()
    assert math.isfinite(result["test_ne"]) and result["test_ne"] < 1.05
    assert math.isfinite(result["train_ne"])
