"""The study spec: regularizer x strength x seed sweeps over one base job spec.

A study is a parent of ordinary jobs. Its spec names a ``base`` job spec, a list of
``variants`` (each a list of regularizers, where any numeric parameter may be a grid:
a list of values), ``seeds`` (a count or a list) and ``passes``. Expanding it gives one
*arm* per variant x grid point, plus the baseline (the base spec, no added
regularizer) which is always added, and one *run* (an ordinary job) per arm x seed.
A seed changes ``training.seed`` only (model init, data order, regularizer draws),
never the data. Each run trains ``passes`` passes once; its per-pass results give
every pass count 1..passes (passes 1..k of a run equal a k-pass run).

Like :mod:`trainer.spec` these modules import no torch, so the API uses it; errors are
:class:`~trainer.errors.SpecError` lines that start with the dotted field path.
Regularizer types and their parameters come from :data:`trainer.spec.Regularizer`, so
new regularizers need no change here.

Where each piece lives (every name is importable from here): the models, what a study
file says and the arms and runs it gives, in :mod:`trainer.study_models`; the grids
and searched ranges checked and the study's size counted in :mod:`trainer.study_grid`;
the expansion, each run's job spec and the cost estimate in :mod:`trainer.study_expand`;
loading a study (a dict or a YAML/JSON file) here. Staged studies (a searched range, a
tuned baseline) run by :mod:`trainer.study_search`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trainer.errors import FieldError, FieldValueError, SpecError, parse_error_line
from trainer.spec import JobSpec, validation_errors
from trainer.study_expand import (
    ASSUMED_EXAMPLES_PER_S,
    ASSUMED_RUN_STARTUP_S,
    Expansion,
    estimate_cost,
    eta_seconds,
    expand,
    expand_arms,
    fmt_value,
    job_spec_dict,
    job_spec_for,
    range_arm,
    set_path,
    tune_points,
)
from trainer.study_grid import (
    RANGE_KINDS,
    RangeAxis,
    check_size,
    count_arms,
    count_runs,
    regularizer_models,
    variant_ranges,
)
from trainer.study_models import (
    BASELINE,
    MAX_GRID_VALUES,
    MAX_SEEDS,
    MAX_STUDY_RUNS,
    TUNABLE_FIELDS,
    Arm,
    Run,
    SearchSpec,
    StudySpec,
    StudyVariant,
    TuneBaselineSpec,
)

__all__ = [
    "ASSUMED_EXAMPLES_PER_S",
    "ASSUMED_RUN_STARTUP_S",
    "Arm",
    "BASELINE",
    "Expansion",
    "MAX_GRID_VALUES",
    "MAX_SEEDS",
    "MAX_STUDY_RUNS",
    "RANGE_KINDS",
    "RangeAxis",
    "Run",
    "SearchSpec",
    "StudySpec",
    "StudyVariant",
    "TUNABLE_FIELDS",
    "TuneBaselineSpec",
    "check_size",
    "count_arms",
    "count_runs",
    "estimate_cost",
    "eta_seconds",
    "expand",
    "expand_arms",
    "fmt_value",
    "job_spec_dict",
    "job_spec_for",
    "load_study",
    "parse_study",
    "range_arm",
    "regularizer_models",
    "set_path",
    "tune_points",
    "variant_ranges",
]


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_study(data: Any, *, base_dir: Path | None = None) -> Expansion:
    """Validate a study dict and expand it; raise :class:`SpecError` naming each bad field.

    ``base`` may be a job spec mapping or (with ``base_dir``, i.e. from a file) the path
    of a job spec file relative to it; ``base_overrides`` (a partial job spec) is merged
    into the base before validation.
    """
    if not isinstance(data, dict):
        raise SpecError.at("study", "the top level must be a mapping (base, variants, seeds, passes, ...)")
    data = dict(data)
    base = data.get("base", {})
    if isinstance(base, str):
        if base_dir is None:
            raise SpecError.at(
                "base", "give the base job spec inline; a file name only works with `rectrain study FILE`"
            )
        p = (base_dir / base).resolve()
        if not p.exists():
            raise SpecError.at("base", f"job spec file {p} does not exist")
        try:
            base = (json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())) or {}
        except (ValueError, yaml.YAMLError) as e:
            raise SpecError.at("base", f"{p} is not valid YAML/JSON: {parse_error_line(e)}") from None
    overrides = data.pop("base_overrides", None)
    if overrides is not None:
        if not isinstance(overrides, dict) or not isinstance(base, dict):
            raise SpecError.at("base_overrides", "must be a mapping (a partial job spec)")
        base = _deep_merge(base, overrides)
    if not isinstance(base, (dict, JobSpec)):
        raise SpecError.at("base", "must be a job spec (a mapping of sections: model, data, training, ...)")
    try:
        data["base"] = base if isinstance(base, JobSpec) else JobSpec.model_validate(base)
    except ValidationError as e:
        raise SpecError(errors=[err.under("base") for err in validation_errors(e)]) from None
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(errors=_study_errors(e)) from None
    return expand(spec)


def _study_errors(err: ValidationError) -> list[FieldError]:
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        if loc[:1] == ("seeds",) and len(loc) > 1 and isinstance(loc[1], str):  # the int | list union
            msg = f"give a count (1..{MAX_SEEDS}) or a list of distinct integer seeds; got {e.get('input')!r}"
            out.append(FieldError(("seeds",), msg))
            continue
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, FieldValueError):
            out.append(cause.error)
        else:  # a ValueError's own text, without pydantic's "Value error, " prefix
            out.append(FieldError(loc, str(cause) if isinstance(cause, ValueError) else e["msg"]))
    return list(dict.fromkeys(out))


def load_study(path: str | Path) -> Expansion:
    """Load and expand a study from a YAML/JSON file (``base`` may name a spec file)."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"study file {p} does not exist")
    try:
        data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (ValueError, yaml.YAMLError) as e:
        raise SpecError(f"study file {p} is not valid YAML/JSON: {parse_error_line(e)}") from None
    return parse_study(data or {}, base_dir=p.parent)
