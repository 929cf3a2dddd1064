"""Every invalid regularizer parameter is refused at spec validation, with a message
starting with the dotted path of the offending field."""

from __future__ import annotations

import pytest
from reg_helpers import spec_dict

from trainer.errors import SpecError
from trainer.spec import REGULARIZER_TYPES, parse_spec

INVALID = [
    # (regularizers, expected message prefix)
    ([{"type": "sparse_l2", "weight": -0.1}], "regularizers.0.weight:"),
    ([{"type": "sparse_l2", "weight": 0}], "regularizers.0.weight:"),
    ([{"type": "sparse_l2"}], "regularizers.0.weight:"),
    ([{"type": "sparse_l1", "weight": -1e-3}], "regularizers.0.weight:"),
    ([{"type": "dense_l2", "weight": -1}], "regularizers.0.weight:"),
    ([{"type": "max_norm", "c": 0}], "regularizers.0.c:"),
    ([{"type": "max_norm", "c": -1.0}], "regularizers.0.c:"),
    ([{"type": "const_norm", "c": 0.0}], "regularizers.0.c:"),
    ([{"type": "sparse_dropout", "p": 1.0}], "regularizers.0.p:"),
    ([{"type": "sparse_dropout", "p": -0.1}], "regularizers.0.p:"),
    (
        [{"type": "sparse_dropout", "p": 0.1, "per_feature": {"user_id": 1.0}}],
        "regularizers.0.per_feature.user_id:",
    ),
    ([{"type": "sparse_dropout", "p": 0.1, "per_feature": {"nope": 0.2}}], "regularizers.0.per_feature:"),
    ([{"type": "dropout", "p": 1.0}], "regularizers.0.p:"),
    ([{"type": "dropout", "p": -0.5}], "regularizers.0.p:"),
    ([{"type": "sse_se", "p": 1.5}], "regularizers.0.p:"),
    ([{"type": "sse_se", "p": 0.1, "per_feature": {"ad_id": -0.1}}], "regularizers.0.per_feature.ad_id:"),
    ([{"type": "sse_se", "p": 0.1, "per_feature": {"zzz": 0.1}}], "regularizers.0.per_feature:"),
    ([{"type": "freeze", "from_pass": 2}], "regularizers.0.from_pass:"),  # num_passes is 2
    ([{"type": "freeze", "from_pass": 5, "what": "dense"}], "regularizers.0.from_pass:"),
    ([{"type": "freeze", "from_pass": -1}], "regularizers.0.from_pass:"),
    ([{"type": "freeze", "from_pass": 1, "what": "everything"}], "regularizers.0.what:"),
    ([{"type": "lr_schedule", "sparse": [1.0, -0.5]}], "regularizers.0.sparse.1:"),
    ([{"type": "lr_schedule", "dense": [1.0, 0.5, 0.25]}], "regularizers.0.dense:"),  # 3 factors, 2 passes
    ([{"type": "shrink", "s": 0}], "regularizers.0.s:"),
    ([{"type": "shrink", "s": 1.5}], "regularizers.0.s:"),
    ([{"type": "shrink", "s": 0.1, "max_count": 0}], "regularizers.0.max_count:"),
    ([{"type": "shrink", "s": 0.1, "every_steps": 0}], "regularizers.0.every_steps:"),
    ([{"type": "shrink", "s": 0.1, "at_pass_end": False}], "regularizers.0.every_steps:"),
    ([{"type": "max_entropy", "weight": 0}], "regularizers.0.weight:"),
    (
        [{"type": "max_entropy", "weight": 0.1, "per_feature": {"ad_id": -1}}],
        "regularizers.0.per_feature.ad_id:",
    ),
    ([{"type": "max_entropy", "weight": 0.1, "per_feature": {"zzz": 0.1}}], "regularizers.0.per_feature:"),
    ([{"type": "sse_graph", "p": -0.1}], "regularizers.0.p:"),
    ([{"type": "embedding_reset", "every": 2}], "regularizers.0.every:"),  # never resets at 2 passes
    ([{"type": "embedding_reset", "every": 0}], "regularizers.0.every:"),
    ([{"type": "embedding_reset", "passes": [0]}], "regularizers.0.passes.0:"),
    ([{"type": "embedding_reset", "passes": [1, 2]}], "regularizers.0.passes:"),
    ([{"type": "embedding_reset", "passes": [1, 1]}], "regularizers.0.passes:"),
    ([{"type": "embedding_reset", "every": 1, "passes": [1]}], "regularizers.0.passes:"),
    ([{"type": "embedding_reset", "features": ["nope"]}], "regularizers.0.features:"),
    ([{"type": "min_count", "k": 0}], "regularizers.0.k:"),
    ([{"type": "min_count", "k": 2, "per_feature": {"zzz": 3}}], "regularizers.0.per_feature:"),
    ([{"type": "min_count", "k": 2, "per_feature": {"ad_id": 0}}], "regularizers.0.per_feature.ad_id:"),
    ([{"type": "l3_magic", "weight": 1}], "regularizers.0.type:"),
    ([{"weight": 1}], "regularizers.0.type:"),
    ([{"type": "max_norm", "c": 1.0, "typo": 1}], "regularizers.0.typo:"),
    ([{"type": "dropout", "p": 0.1}, {"type": "max_norm", "c": -2}], "regularizers.1.c:"),
    ([{"type": "dropout", "p": 0.1}, {"type": "dropout", "p": 0.2}], "regularizers:"),
]


@pytest.mark.parametrize(
    "regs,prefix", INVALID, ids=[f"{r[-1].get('type', 'notype')}-{p}" for r, p in INVALID]
)
def test_invalid_parameters_are_refused_naming_the_field(regs, prefix):
    with pytest.raises(SpecError) as e:
        parse_spec(spec_dict(regs))
    msg = str(e.value)
    assert msg.startswith(prefix), msg


def test_unknown_type_lists_the_known_ones():
    with pytest.raises(SpecError) as e:
        parse_spec(spec_dict([{"type": "l3_magic"}]))
    assert "l3_magic" in str(e.value) and all(t in str(e.value) for t in REGULARIZER_TYPES)


def test_every_type_validates_and_all_compose():
    regs = [
        {"type": "sparse_l2", "weight": 1e-4, "decouple": True},
        {"type": "sparse_l1", "weight": 1e-5},
        {"type": "max_norm", "c": 1.0},
        {"type": "const_norm", "c": 0.5},
        {"type": "sparse_dropout", "p": 0.1, "per_feature": {"user_id": 0.3}},
        {"type": "dropout", "p": 0.2},
        {"type": "dense_l2", "weight": 1e-4},
        {"type": "sse_se", "p": 0.01, "per_feature": {"ad_id": 0.0}},
        {"type": "freeze", "from_pass": 1, "what": "both"},
        {"type": "lr_schedule", "sparse": [1.0, 0.5], "dense": [1.0], "reset": True},
        {"type": "shrink", "s": 0.1, "every_steps": 100, "max_count": 5, "reset_state": True},
        {"type": "max_entropy", "weight": 1e-3, "per_feature": {"ctx_0": 0.0}},
        {"type": "sse_graph", "p": 0.05, "per_feature": {"ad_history": 0.1}},
        {"type": "freq_decay", "alpha": 1e-3},
        {"type": "embedding_reset", "every": 1, "features": ["user_id", "ad_id"]},
        {"type": "min_count", "k": 5, "per_feature": {"ctx_0": 1}},
    ]
    spec = parse_spec(spec_dict(regs))
    assert [r.type for r in spec.regularizers] == [r["type"] for r in regs]
    assert set(REGULARIZER_TYPES) == {r["type"] for r in regs}
    # edge values that are valid
    parse_spec(
        spec_dict(
            [
                {"type": "sparse_dropout", "p": 0.0},
                {"type": "freeze", "from_pass": 0},
                {"type": "lr_schedule", "sparse": [0.0, 1.0]},
            ]
        )
    )
