"""A refused spec's problems are data (field path tuple, message); the text the CLI shows
is derived from them."""

from __future__ import annotations

import pickle

import pytest

from tests.trainer.specs import tiny_spec_dict
from trainer.data_roots import DataPathRefused
from trainer.errors import CapacityError, FieldError, FieldValueError, SpecError
from trainer.spec import is_spec_field, parse_spec
from trainer.study_spec import parse_study


def _refusal(d: dict, **kw) -> SpecError:
    with pytest.raises(SpecError) as e:
        parse_spec(d, **kw)
    return e.value


def test_each_problem_is_a_field_path_and_a_message():
    e = _refusal(tiny_spec_dict(model={"hash_size": 1, "embedding_dim": 6}, training={"num_passes": "many"}))
    locs = [err.loc for err in e.errors]
    assert ("model", "hash_size") in locs and ("model", "embedding_dim") in locs
    assert ("training", "num_passes") in locs
    assert e.message == "\n".join(err.line for err in e.errors)
    assert all(err.line == f"{'.'.join(map(str, err.loc))}: {err.msg}" for err in e.errors)


@pytest.mark.parametrize(
    "patch, loc, text",
    [
        ({"metrics": {"window_size": 10}}, ("metrics", "window_size"), "examples per worker"),
        ({"model": {"dense_arch": [16, 4]}}, ("model", "dense_arch"), "must equal model.embedding_dim"),
        ({"data": {"test_days": [0]}}, ("data", "test_days"), "also in data.train_days"),
        ({"training": {"init_from": {}}}, ("training", "init_from"), "name the model to start from"),
        (
            {"regularizers": [{"type": "sparse_dropout", "p": 0.1, "per_feature": {"zz": 0.1}}]},
            ("regularizers", 0, "per_feature"),
            "'zz' is not a sparse feature",
        ),
        ({"regularizers": [{"type": "max_norm", "c": -1}]}, ("regularizers", 0, "c"), "greater than 0"),
        (
            {"regularizers": [{"type": "nope"}]},
            ("regularizers", 0, "type"),
            "unknown regularizer type 'nope'",
        ),
    ],
)
def test_validators_name_their_field_as_data(patch, loc, text):
    (err,) = _refusal(tiny_spec_dict(**patch)).errors
    assert err.loc == loc and text in err.msg and not err.msg.startswith(".".join(map(str, loc)))


def test_spec_fields_are_the_sections_fields():
    assert is_spec_field(("model", "dense_arch")) and is_spec_field(("regularizers",))
    assert not is_spec_field(("regularizers", 0, "p")) and not is_spec_field(("nope",))


def test_capacity_refusal_names_its_field():
    (err,) = _refusal(tiny_spec_dict(model={"hash_size": 2**31 - 1})).errors
    assert err.loc == ("model",) and "GiB per worker" in err.msg
    gpu = tiny_spec_dict(model={"hash_size": 2**31 - 1}, scaling={"use_gpu": True, "gpu_memory_gb": 8})
    e = _refusal(gpu)
    assert isinstance(e, CapacityError) and e.errors[0].loc == ("model",)
    assert e.message.startswith("model: the embedding tables need")


def test_forms_of_construction_and_pickling():
    assert SpecError.at("scaling.num_workers", "too many").errors == [
        FieldError(("scaling", "num_workers"), "too many")
    ]
    assert SpecError("x", field=("regularizers", 1, "p")).message == "regularizers.1.p: x"
    # the old form: the field is the message's head when that is a dotted path
    assert SpecError("data.path: outside").errors == [FieldError(("data", "path"), "outside")]
    assert SpecError("spec file a.yaml does not exist").errors[0].loc == ()
    assert SpecError.at("a", "m").under("base").message == "base.a: m"
    for e in (CapacityError.at("model", "too big"), DataPathRefused.at("data.path", "no"), SpecError("p")):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and back.errors == e.errors and back.message == e.message
    fv = FieldValueError(("data", "path"), "required")
    assert str(fv) == "data.path: required" and fv.error.loc == ("data", "path")


def test_study_errors_point_at_the_study_field():
    base = tiny_spec_dict()
    e = pytest.raises(
        SpecError,
        parse_study,
        {"base": base, "variants": [{"name": "a", "regularizers": [{"type": "sparse_l2", "wieght": 1}]}]},
    ).value
    assert [err.loc for err in e.errors] == [("variants", 0, "regularizers", 0, "wieght")]
    e = pytest.raises(
        SpecError,
        parse_study,
        {
            "base": base,
            "variants": [
                {"name": "a", "regularizers": [{"type": "sse_se", "p": 0.1, "per_feature": {"zz": 0.1}}]}
            ],
        },
    ).value
    (err,) = e.errors
    assert err.loc == ("variants", 0, "regularizers", 0, "per_feature") and err.msg.endswith("(at a)")
    e = pytest.raises(
        SpecError, parse_study, {"base": {**base, "metrics": {"window_size": 10}}, "variants": []}
    ).value
    assert e.errors[0].loc == ("base", "metrics", "window_size")
    e = pytest.raises(SpecError, parse_study, {"base": base, "seeds": [1, 1], "variants": []}).value
    assert e.errors == [FieldError(("seeds",), "repeated seeds [1]; each seed once")]
