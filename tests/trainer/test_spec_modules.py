"""The job spec split by concern: every section's models next to the code they configure,
``trainer.spec`` assembling and re-exporting them, the memory model counting the dense
parameters from the model's own layer shapes; none of it loads torch."""

from __future__ import annotations

import pytest

from tests.trainer.specs import tiny_spec_dict
from trainer import memory
from trainer.spec import parse_spec

SPEC_MODULES = (
    "trainer.spec",
    "trainer.config_base",
    "trainer.model.config",
    "trainer.model.shapes",
    "trainer.data.config",
    "trainer.training_config",
    "trainer.scaling_config",
    "trainer.metrics.config",
    "trainer.regularizers.config",
    "trainer.memory",
)


def test_the_spec_modules_import_no_torch():
    from tests.heavy_imports import heavy_imports

    assert heavy_imports(*SPEC_MODULES) == []


def test_trainer_spec_re_exports_every_section():
    import trainer.spec as spec_mod

    for name in spec_mod.__all__:
        assert hasattr(spec_mod, name), name
    # the sections' classes are the very ones their own modules define
    from trainer.data.config import DataSpec
    from trainer.model.config import ModelSpec
    from trainer.regularizers.config import SparseL2

    assert spec_mod.DataSpec is DataSpec and spec_mod.ModelSpec is ModelSpec and spec_mod.SparseL2 is SparseL2


@pytest.mark.parametrize(
    "model, data",
    [
        ({}, {}),
        ({"interaction": "concat", "dense_arch": [32, 7], "over_arch": [24, 12]}, {}),
        ({"batch_norm": True, "dense_arch": [16, 8], "over_arch": [16]}, {}),
        ({"batch_norm": True, "interaction": "concat", "over_arch": []}, {}),
        ({"embedding_dim": 12, "dense_arch": [20, 12], "num_replicas": 2}, {}),
        # no dense features: no dense arch; dot over the sparse features only
        ({}, {"synthetic": {"num_dense_features": 0, "num_context_features": 5}}),
        ({"interaction": "concat"}, {"synthetic": {"num_dense_features": 0, "history_length": 0}}),
    ],
)
def test_memory_model_counts_the_real_dlrm_dense_parameters(model, data):
    from trainer.model.dlrm import DLRM

    d = tiny_spec_dict()
    d["model"] = {**d["model"], **model}
    d["data"] = {**d["data"], **data, "synthetic": {**d["data"]["synthetic"], **data.get("synthetic", {})}}
    spec = parse_spec(d, check_capacity=False)
    net = DLRM(spec)
    dense = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("ebc."))
    assert dense > 0
    assert memory.dense_param_count(spec) == spec.dense_param_count() == dense
