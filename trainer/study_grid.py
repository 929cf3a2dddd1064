"""A study's grids and ranges: each variant's regularizer entries checked against the
regularizer's model (:func:`regularizer_models`: new regularizers need no change here),
the grid axes and searched range (:class:`RangeAxis`) they give, and the study's size
counted from the grid lengths alone, before anything is expanded."""

from __future__ import annotations

import json
import math
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel

from trainer.errors import SpecError
from trainer.spec import Regularizer
from trainer.study_models import BASELINE, MAX_GRID_VALUES, MAX_STUDY_RUNS, StudySpec, StudyVariant


def regularizer_models() -> dict[str, type[BaseModel]]:
    """type name -> pydantic model of every regularizer :mod:`trainer.spec` knows."""
    union = typing.get_args(Regularizer)[0]  # Annotated[Union[...], discriminator]
    out: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        tag = typing.get_args(model.model_fields["type"].annotation)
        if tag:
            out[tag[0]] = model
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ",".join(fmt_param(x) for x in v) + "]"
    return str(v)


def _field_kind(model: type[BaseModel], name: str) -> str:
    """'list' for list-valued fields, 'number' for int/float ones, else 'other'."""
    ann = model.model_fields[name].annotation
    seen = [ann]
    while seen:
        a = seen.pop()
        origin = typing.get_origin(a)
        if origin is list:
            return "list"
        if origin is Annotated:
            seen.append(typing.get_args(a)[0])
            continue
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            seen.extend(x for x in typing.get_args(a) if x is not type(None))
            continue
        if a in (int, float):
            return "number"
    return "other"


RANGE_KINDS = ("log_range", "range")


@dataclass(frozen=True)
class RangeAxis:
    """A numeric regularizer parameter searched over ``[low, high]`` (trainer/study_search.py)."""

    reg_index: int  # which regularizer of the variant
    param: str  # e.g. "weight"
    key: str  # "sparse_l2.weight"
    scale: str  # "log" | "linear"
    low: float
    high: float
    integer: bool = False  # an int parameter: strengths are rounded to integers

    def to_dict(self) -> dict[str, Any]:
        return {"param": self.key, "scale": self.scale, "low": self.low, "high": self.high}


def _range_of(where: str, kind: str, param: str, value: dict[str, Any], fk: str) -> tuple[str, float, float]:
    keys = [k for k in value if k in RANGE_KINDS]
    if len(value) != 1 or len(keys) != 1:
        raise SpecError.at(
            f"{where}.{param}",
            f"a range is {{log_range: [low, high]}} or {{range: [low, high]}}; got keys {sorted(value)}",
        )
    if fk != "number":
        raise SpecError.at(
            f"{where}.{param}", "a range is only allowed over numeric parameters; give one value"
        )
    (rk,) = keys
    bounds = value[rk]
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)):
        raise SpecError.at(f"{where}.{param}.{rk}", f"give two numbers [low, high]; got {bounds!r}")
    low, high = float(bounds[0]), float(bounds[1])
    if not low < high:
        raise SpecError.at(f"{where}.{param}.{rk}", f"low ({low:g}) must be below high ({high:g})")
    if rk == "log_range" and low <= 0:
        raise SpecError.at(
            f"{where}.{param}.log_range", f"low must be > 0 on a log scale; got {low:g} (or use range)"
        )
    return ("log" if rk == "log_range" else "linear"), low, high


def _params_of(
    where: str, entry: Any, models: dict[str, type[BaseModel]]
) -> tuple[dict[str, list[Any]], dict[str, tuple[str, float, float]]]:
    """The grid and range parameters of one regularizer entry (checked)."""
    if not isinstance(entry, dict):
        raise SpecError.at(f"{where}", "each regularizer is a mapping like {type: sparse_l2, weight: 1e-4}")
    kind = entry.get("type")
    if kind not in models:
        raise SpecError.at(
            f"{where}.type",
            ""
            + (f"unknown regularizer type '{kind}'" if kind is not None else "required")
            + f"; choose one of {', '.join(models)}",
        )
    model = models[kind]
    grids: dict[str, list[Any]] = {}
    ranges: dict[str, tuple[str, float, float]] = {}
    for param, value in entry.items():
        if param == "type":
            continue
        if param not in model.model_fields:
            known = [p for p in model.model_fields if p != "type"]
            raise SpecError.at(
                f"{where}.{param}", f"unknown parameter of {kind}; its parameters are {', '.join(known)}"
            )
        fk = _field_kind(model, param)
        if isinstance(value, dict) and (any(k in value for k in RANGE_KINDS) or fk == "number"):
            ranges[param] = _range_of(where, kind, param, value, fk)
            continue
        is_grid = isinstance(value, list) and (
            fk != "list" or (value and all(isinstance(x, list) for x in value))
        )
        if not is_grid:
            continue
        if not value:
            raise SpecError.at(f"{where}.{param}", "an empty grid; give at least one value")
        if len(value) > MAX_GRID_VALUES:
            raise SpecError.at(f"{where}.{param}", f"{len(value)} grid values; at most {MAX_GRID_VALUES}")
        if fk == "number":
            bad = [x for x in value if not _is_number(x)]
            if bad:
                raise SpecError.at(f"{where}.{param}", f"grid values must be numbers; got {bad[0]!r}")
        elif fk != "list":
            raise SpecError.at(
                f"{where}.{param}",
                "a grid (list of values) is only allowed over numeric parameters; give one value",
            )
        canon = [json.dumps(x) for x in value]
        if len(set(canon)) != len(canon):
            raise SpecError.at(f"{where}.{param}", f"repeated grid values {value}; list each value once")
        grids[param] = value
    return grids, ranges


def _grids_of(where: str, entry: Any, models: dict[str, type[BaseModel]]) -> dict[str, list[Any]]:
    """The grid parameters of one regularizer entry: param -> its values (checked)."""
    return _params_of(where, entry, models)[0]


def variant_name(v: StudyVariant) -> str:
    return v.name or "+".join(str(r.get("type")) for r in v.regularizers)


def _variant_axes(spec: StudySpec) -> list[list[tuple[int, str, list[Any]]]]:
    """Each variant's grid axes (regularizer index, parameter, values), checked: no
    product is built here. A variant with a range has no grid axes (see variant_ranges)."""
    return [axes for axes, _ in variant_params(spec)]


def variant_ranges(spec: StudySpec) -> dict[int, RangeAxis]:
    """variant index -> its searched range, for the variants that give one."""
    return {i: r for i, (_, r) in enumerate(variant_params(spec)) if r is not None}


def variant_params(spec: StudySpec) -> list[tuple[list[tuple[int, str, list[Any]]], RangeAxis | None]]:
    models = regularizer_models()
    names: set[str] = {BASELINE}
    out: list[tuple[list[tuple[int, str, list[Any]]], RangeAxis | None]] = []
    for i, v in enumerate(spec.variants):
        vname = variant_name(v)
        if vname in names:
            raise SpecError.at(
                f"variants.{i}.name", f"'{vname}' is used twice; give each variant its own name"
            )
        names.add(vname)
        axes: list[tuple[int, str, list[Any]]] = []
        rng: list[RangeAxis] = []
        for j, entry in enumerate(v.regularizers):
            where = f"variants.{i}.regularizers.{j}"
            grids, ranges = _params_of(where, entry, models)
            for param, values in grids.items():
                axes.append((j, param, values))
            for param, (scale, low, high) in ranges.items():
                ann = models[entry["type"]].model_fields[param].annotation
                is_int = ann is int or (int in typing.get_args(ann) and float not in typing.get_args(ann))
                rng.append(RangeAxis(j, param, f"{entry['type']}.{param}", scale, low, high, is_int))
        if len(rng) > 1:
            raise SpecError.at(
                f"variants.{i}",
                f"{len(rng)} ranges ({', '.join(r.key for r in rng)}); a variant searches "
                "one parameter: give the others one value, or split the variant",
            )
        if rng and axes:
            raise SpecError.at(
                f"variants.{i}",
                f"a range ({rng[0].key}) and a grid ({axes[0][1]}) in one variant; "
                "give the grid parameter one value, or make it its own variant",
            )
        if not rng and v.search is not None:
            raise SpecError.at(f"variants.{i}.search", "this variant has no range to search; remove search")
        out.append((axes, rng[0] if rng else None))
    return out


def count_arms(spec: StudySpec) -> int:
    """Fixed arms (baseline included) from the grid sizes alone: a product of lengths per
    variant, so a huge grid is refused in microseconds, before anything is expanded.
    Variants with a range add their arms while the study runs (not counted here)."""
    return 1 + sum(
        math.prod(len(vals) for _, _, vals in axes) for axes, rng in variant_params(spec) if rng is None
    )


def count_runs(spec: StudySpec) -> int:
    return count_arms(spec) * len(spec.seed_list())


def check_size(spec: StudySpec, max_runs: int = MAX_STUDY_RUNS) -> int:
    """The number of runs, counted without expanding; :class:`SpecError` on ``variants``
    past ``max_runs`` (never above :data:`MAX_STUDY_RUNS`)."""
    arms, seeds = count_arms(spec), len(spec.seed_list())
    n_runs = arms * seeds
    limit = min(max_runs, MAX_STUDY_RUNS)
    if n_runs > limit:
        raise SpecError.at(
            "variants",
            f"{arms} arms (baseline included) x {seeds} seeds = {n_runs} runs; "
            f"a study has at most {limit}: shrink the grids or the seeds",
        )
    return n_runs
