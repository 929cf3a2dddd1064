"""Issue 17, point 2: specs that cannot run are refused naming the field, non-finite
numbers are refused everywhere, and the memory estimate counts more than embeddings."""

from __future__ import annotations

import pytest

from trainer.errors import CapacityError, SpecError
from trainer.spec import parse_spec


def _refused(spec: dict, field: str, exc=SpecError) -> str:
    with pytest.raises(exc) as e:
        parse_spec(spec)
    msg = e.value.message
    assert field in msg, msg
    return msg


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"data": {"synthetic": {"num_users": 10**12}}}, "data.synthetic.num_users"),
        ({"data": {"synthetic": {"context_cardinality": 10**12}}}, "data.synthetic.context_cardinality"),
        ({"model": {"dense_arch": [65536, 65536, 16]}}, "model.dense_arch.0"),
        ({"data": {"train_days": list(range(10000)), "test_days": []}}, "data.train_days"),
        ({"data": {"train_days": [0], "test_days": [10**7]}}, "data.test_days.0"),
        ({"training": {"seed": -1}}, "training.seed"),
        ({"metrics": {"window_size": 10**12}}, "metrics.window_size"),
    ],
)
def test_unbounded_sizes_are_refused(spec, field):
    _refused(spec, field)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"data": {"synthetic": {"signal_scale": float("inf")}}}, "data.synthetic.signal_scale"),
        ({"data": {"synthetic": {"label_noise": float("nan")}}}, "data.synthetic.label_noise"),
        ({"training": {"dense_grad_clip_norm": float("inf")}}, "training.dense_grad_clip_norm"),
        ({"training": {"sparse_optimizer": {"max_gradient": float("inf")}}}, "max_gradient"),
        ({"regularizers": [{"type": "max_norm", "c": float("nan")}]}, "regularizers.0.c"),
    ],
)
def test_non_finite_numbers_are_refused(spec, field):
    msg = _refused(spec, field)
    assert "finite" in msg or "less than" in msg, msg


def test_dense_layers_count_in_the_memory_estimate():
    # 8192 x 8192 dense layers: 256 MiB each, x4 with gradients and Adam: refused on 1 GiB
    spec = {
        "model": {"dense_arch": [8192, 8192, 16]},
        "scaling": {"memory_per_worker_gb": 1},
    }
    msg = _refused(spec, "model", CapacityError)
    assert "most of it dense" in msg and "model.dense_arch" in msg
    parts = parse_spec({"model": {"dense_arch": [8192, 8192, 16]}}, check_capacity=False)
    assert parts.memory_estimate_per_worker()["dense"] > 8192 * 8192 * 4 * 3


def test_batches_prefetch_and_data_count_in_the_memory_estimate():
    big_batches = {
        "data": {"synthetic": {"examples_per_day": 10**8}, "batch_size": 1 << 20, "prefetch_batches": 256},
        "metrics": {"window_size": 1 << 21},
    }
    msg = _refused(big_batches, "data", CapacityError)
    assert "GiB per worker" in msg and "scaling.memory_per_worker_gb" in msg
    parts = parse_spec(big_batches, check_capacity=False).memory_estimate_per_worker()
    assert parts["prefetch"] > 8 * 1024**3 and parts["data"] > 8 * 1024**3
    # the generator's ground truth: a billion users do not fit 8 GiB
    msg = _refused({"data": {"synthetic": {"num_users": 10**9}}}, "data.synthetic", CapacityError)
    assert "generator" in msg


def test_divergence_and_wall_clock_fields():
    spec = parse_spec({"training": {"max_wall_seconds": 60, "on_divergence": "continue"}})
    assert spec.training.max_wall_seconds == 60 and spec.training.on_divergence == "continue"
    assert parse_spec({}).training.on_divergence == "fail"
    _refused({"training": {"on_divergence": "ignore"}}, "training.on_divergence")
    _refused({"training": {"max_wall_seconds": 0}}, "training.max_wall_seconds")
