"""The 422 ``detail`` entries of a refused spec, built from the field errors a
:class:`~trainer.errors.SpecError` (or a spec validator's
:class:`~trainer.errors.FieldValueError`) carries: the field's path is data, never
read back out of the message. ``msg`` is the problem's human line (``field: what to
change``), as the CLI shows it.
"""

from __future__ import annotations

from typing import Any

from trainer.errors import FieldError, FieldValueError, SpecError
from trainer.spec import is_spec_field

BODY_SPEC = ("body", "spec")


def _entry(loc: tuple[Any, ...], msg: str, type_: str) -> dict[str, Any]:
    return {"type": type_, "loc": loc, "msg": msg, "input": None}


def _path(err: FieldError) -> tuple[str, ...]:
    return tuple(str(p) for p in err.loc)


def capacity_detail(e: SpecError) -> list[dict[str, Any]]:
    """A job that does not fit: at its field (``model`` when it names none)."""
    return [_entry((*BODY_SPEC, *(_path(err) or ("model",))), err.line, "capacity") for err in e.errors]


def limit_detail(e: SpecError) -> list[dict[str, Any]]:
    """A spec the service refuses (limits, data roots, ``training.init_from``): at its
    field when that is a field of the spec's sections, else at the spec."""
    return [
        _entry((*BODY_SPEC, *_path(err)) if is_spec_field(err.loc) else BODY_SPEC, err.line, "limit")
        for err in e.errors
    ]


def study_detail(e: SpecError) -> list[dict[str, Any]]:
    """A study spec that does not validate: each problem at its study field."""
    return [_entry((*BODY_SPEC, *_path(err)), err.line, "value_error") for err in e.errors]


def study_base_detail(e: SpecError, type_: str) -> list[dict[str, Any]]:
    """A study none of whose runs can start: at the field of its ``base`` job spec."""
    return [_entry((*BODY_SPEC, "base", *_path(err)), f"base.{err.line}", type_) for err in e.errors]


def request_error_loc(err: dict[str, Any]) -> tuple[list[Any], str]:
    """Where FastAPI's validation error of a request is reported, and its message: a
    spec validator's refusal at the field it names (when a field of the spec's
    sections), its text without pydantic's ``Value error,`` prefix."""
    loc, msg = list(err.get("loc", ())), str(err.get("msg", ""))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError):
        msg = str(cause)
    if isinstance(cause, FieldValueError) and loc[:2] == list(BODY_SPEC) and is_spec_field(cause.error.loc):
        loc = [*BODY_SPEC, *cause.error.loc]
    return loc, msg
