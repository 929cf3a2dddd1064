"""The 422 detail of a refused spec comes from the field errors the refusal carries."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.models import JobCreate
from api.spec_errors import capacity_detail, limit_detail, request_error_loc, study_base_detail, study_detail
from trainer.errors import CapacityError, FieldError, SpecError

TINY = {
    "data": {"synthetic": {"examples_per_day": 4000, "num_users": 500, "num_ads": 200}, "batch_size": 256},
    "model": {"hash_size": 2000, "embedding_dim": 8, "dense_arch": [16, 8], "over_arch": [16]},
    "metrics": {"window_size": 1024},
}


def _request_errors(spec: dict) -> list[tuple[list, str]]:
    with pytest.raises(ValidationError) as e:
        JobCreate.model_validate({"spec": spec})
    return [request_error_loc({**err, "loc": ("body", *err["loc"])}) for err in e.value.errors()]


def test_a_validator_error_is_reported_at_the_field_it_names():
    ((loc, msg),) = _request_errors({**TINY, "metrics": {"window_size": 10}})
    assert loc == ["body", "spec", "metrics", "window_size"] and msg.startswith(
        "metrics.window_size: 10 gives"
    )
    # one regularizer's field is not a section field: reported at the spec, as before
    bad = {**TINY, "regularizers": [{"type": "sparse_dropout", "p": 0.1, "per_feature": {"zz": 0.1}}]}
    ((loc, msg),) = _request_errors(bad)
    assert loc == ["body", "spec"] and msg.startswith("regularizers.0.per_feature: 'zz'")
    ((loc, msg),) = _request_errors({**TINY, "model": {**TINY["model"], "hash_size": 1}})
    assert loc == ["body", "spec", "model", "hash_size"] and not msg.startswith("Value error")


def test_refusals_at_their_fields():
    e = SpecError(errors=[FieldError(("scaling", "num_workers"), "too many"), FieldError(("x", 1), "odd")])
    assert limit_detail(e) == [
        {
            "type": "limit",
            "loc": ("body", "spec", "scaling", "num_workers"),
            "msg": "scaling.num_workers: too many",
            "input": None,
        },
        {"type": "limit", "loc": ("body", "spec"), "msg": "x.1: odd", "input": None},
    ]
    assert [d["loc"] for d in capacity_detail(CapacityError("no field here"))] == [("body", "spec", "model")]
    assert capacity_detail(CapacityError.at("data.batch_size", "big"))[0]["loc"] == (
        "body",
        "spec",
        "data",
        "batch_size",
    )
    s = SpecError(
        errors=[FieldError(("variants", 0, "regularizers", 1, "p"), "bad"), FieldError((), "v (a): m")]
    )
    assert [(d["loc"], d["msg"]) for d in study_detail(s)] == [
        (("body", "spec", "variants", "0", "regularizers", "1", "p"), "variants.0.regularizers.1.p: bad"),
        (("body", "spec"), "v (a): m"),
    ]
    (d,) = study_base_detail(SpecError.at("training.init_from.job", "you have no job x"), "value_error")
    assert d["loc"] == ("body", "spec", "base", "training", "init_from", "job")
    assert d["msg"] == "base.training.init_from.job: you have no job x"
