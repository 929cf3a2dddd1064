"""The study spec: regularizer x strength x seed sweeps over one base job spec.

A study is a parent of ordinary jobs. Its spec names a ``base`` job spec, a list of
``variants`` (each a list of regularizers, where any numeric parameter may be a grid:
a list of values), ``seeds`` (a count or a list) and ``passes``. Expanding it gives one
*arm* per variant x grid point, plus the baseline (the base spec, no added
regularizer) which is always added, and one *run* (an ordinary job) per arm x seed.
A seed changes ``training.seed`` only (model init, data order, regularizer draws),
never the data. Each run trains ``passes`` passes once; its per-pass results give
every pass count 1..passes (passes 1..k of a run equal a k-pass run).

Like :mod:`trainer.spec` this module imports no torch, so the API uses it; errors are
:class:`~trainer.errors.SpecError` lines that start with the dotted field path.
Regularizer types and their parameters come from :data:`trainer.spec.Regularizer`, so
new regularizers need no change here.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trainer.errors import FieldError, FieldValueError, SpecError, parse_error_line
from trainer.spec import DataSource, JobSpec, Regularizer, validation_errors

# A study never expands past this many runs, whoever submits it (the service also
# applies a per-owner limit, RECTRAIN_STUDY_MAX_RUNS).
MAX_STUDY_RUNS = 5000
MAX_SEEDS = 100
MAX_GRID_VALUES = 50
BASELINE = "baseline"

# Rough cost model for the estimate shown before a study runs: a run pays a fixed
# start-up and then trains at about this rate. Both are CPU figures from this project's
# 2-core dev VM; the start-up is calibrated on examples/study.yaml run on warm worker
# groups (trainer/warm.py: 117 one-worker runs in 5.1 min, a run's overhead beyond its
# training and evaluation 0.7 s median; it was 25 s with one Ray Train fit per run:
# BENCHMARKS.md "Warm execution of study runs"). An order of magnitude, not a promise:
# once runs finish, eta_seconds measures the real rate.
ASSUMED_RUN_STARTUP_S = 1.0
ASSUMED_EXAMPLES_PER_S = 50_000.0


def eta_seconds(elapsed_s: float, finished: int, remaining: int) -> float | None:
    """Time left at the rate runs have finished so far (``elapsed_s`` since the first
    run started, ``finished`` runs ended): measured, so it includes this machine's
    speed, the start-up of each run and how many run at once; None before the first
    run ends (the plan's fixed-rate estimate is all there is then)."""
    if finished <= 0 or elapsed_s <= 0:
        return None
    return round(remaining * elapsed_s / finished, 1)


def regularizer_models() -> dict[str, type[BaseModel]]:
    """type name -> pydantic model of every regularizer :mod:`trainer.spec` knows."""
    union = typing.get_args(Regularizer)[0]  # Annotated[Union[...], discriminator]
    out: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        tag = typing.get_args(model.model_fields["type"].annotation)
        if tag:
            out[tag[0]] = model
    return out


# --------------------------------------------------------------------------- the spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchSpec(_Strict):
    """How a strength given as a range is searched (successive halving on validation NE;
    trainer/study_search.py, docs/studies.md "Strength search").

    Args:
        points (int): strengths tried in round 1, evenly spaced over the range (log-spaced
            for ``log_range``), endpoints included.
        rounds (int): rounds of halving; each keeps the better half on the mean validation
            Δ vs the baseline, adds ``seeds_per_round`` seeds to the survivors and inserts
            a refinement point between the best strength and each of its neighbours.
        seeds_per_round (int): new search seeds per round (never the study's own seeds,
            which confirm the chosen strength).
        budget_runs (int | None): most search runs of one searched variant (the baseline's
            runs on the search seeds are counted apart); a round that does not fit ends
            the search early (refinement points are dropped first). Default: what the
            schedule needs at most.
    """

    points: int = Field(5, ge=2, le=MAX_GRID_VALUES)
    rounds: int = Field(3, ge=1, le=10)
    seeds_per_round: int = Field(2, ge=1, le=20)
    budget_runs: int | None = Field(None, ge=1, le=MAX_STUDY_RUNS)


# job-spec fields a tuned baseline may tune (dotted paths into trainer.spec.JobSpec)
TUNABLE_FIELDS = ("training.sparse_optimizer.lr", "model.embedding_dim", "training.dense_optimizer.lr")


class TuneBaselineSpec(_Strict):
    """An optional first stage: the baseline over a grid of job-spec fields, chosen on
    validation NE after ``passes`` passes; every arm (and the baseline) then uses the
    chosen values.

    Args:
        grid (dict[str, list]): dotted job-spec field -> values, e.g.
            ``{"training.sparse_optimizer.lr": [0.02, 0.04, 0.1], "model.embedding_dim": [8, 16]}``.
        passes (int): passes each tuning run trains (its validation NE after these passes chooses).
        seeds (int): tuning seeds (never the study's own seeds).
    """

    grid: dict[str, list[int | float]] = Field(min_length=1, max_length=len(TUNABLE_FIELDS))
    passes: int = Field(1, ge=1, le=100)
    seeds: int = Field(2, ge=1, le=20)

    @field_validator("grid")
    @classmethod
    def _fields(cls, v: dict[str, list[int | float]]) -> dict[str, list[int | float]]:
        for path, values in v.items():
            if path not in TUNABLE_FIELDS:
                raise ValueError(
                    f"tune_baseline.grid.{path}: not a tunable field; choose from {', '.join(TUNABLE_FIELDS)}"
                )
            if not values:
                raise ValueError(f"tune_baseline.grid.{path}: an empty list; give at least one value")
            if len(values) > MAX_GRID_VALUES:
                raise ValueError(
                    f"tune_baseline.grid.{path}: {len(values)} values; at most {MAX_GRID_VALUES}"
                )
            if len(set(values)) != len(values):
                raise ValueError(f"tune_baseline.grid.{path}: repeated values {values}; list each value once")
        if math.prod(len(x) for x in v.values()) > 100:
            raise FieldValueError("tune_baseline.grid", "more than 100 combinations; shorten the lists")
        return v


class StudyVariant(_Strict):
    """One variant: regularizers added to the base spec's; numeric params may be grids.

    Args:
        name (str | None): display name (default: the regularizer types joined by "+").
        regularizers (list[dict]): entries like a job spec's ``regularizers``, where a
            numeric parameter may be a list of values (a grid: ``weight: [1e-5, 1e-4]``)
            and a list-valued parameter a list of lists (alternatives:
            ``sparse: [[1, 0.5], [1, 0.25]]``). Several grids in one variant multiply.
            A numeric parameter may instead be a range to search:
            ``weight: {log_range: [1e-6, 1e-2]}`` or ``{range: [0.1, 0.9]}`` (one per
            variant, and no grid beside it).
        search (SearchSpec | None): this variant's search settings (default: the study's).
    """

    name: str | None = Field(None, min_length=1, max_length=80)
    regularizers: list[dict[str, Any]] = Field(min_length=1, max_length=16)
    search: SearchSpec | None = None


class StudySpec(_Strict):
    """A study: variants x grid points x seeds of one base job spec.

    Args:
        name (str | None): display name.
        base (JobSpec): the job every run starts from; the baseline arm is this spec.
        variants (list[StudyVariant]): what to compare with the baseline.
        seeds (int | list[int]): a count n (seeds base.training.seed + 0..n-1) or an
            explicit list of distinct seeds; only ``training.seed`` changes.
        passes (int | None): passes every run trains (default base.training.num_passes);
            results are reported for every pass count 1..passes.
        labels (dict[str, str]): labels added to every job of the study.
        search (SearchSpec | None): how variants with a range are searched (defaults apply
            when a variant has a range and this is unset).
        tune_baseline (TuneBaselineSpec | None): tune the baseline first (see its doc).
    """

    name: str | None = Field(None, min_length=1, max_length=200)
    base: JobSpec = Field(default_factory=JobSpec)
    variants: list[StudyVariant] = Field(default_factory=list, max_length=200)
    seeds: Annotated[int, Field(ge=1, le=MAX_SEEDS)] | list[int] = 3
    passes: int | None = Field(None, ge=1, le=100)
    labels: dict[str, str] = Field(default_factory=dict, max_length=16)
    search: SearchSpec | None = None
    tune_baseline: TuneBaselineSpec | None = None

    @field_validator("seeds")
    @classmethod
    def _seed_list(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, list):
            if not v:
                raise FieldValueError("seeds", "give at least one seed (or a count, e.g. seeds: 3)")
            if len(v) > MAX_SEEDS:
                raise FieldValueError("seeds", f"{len(v)} seeds; at most {MAX_SEEDS}")
            dup = sorted({s for s in v if v.count(s) > 1})
            if dup:
                raise FieldValueError("seeds", f"repeated seeds {dup}; each seed once")
        return v

    @field_validator("labels")
    @classmethod
    def _no_reserved_labels(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in v if k.startswith("study"))
        if bad:
            raise FieldValueError("labels", f"{bad} are set by the study itself; rename them")
        return v

    def seed_list(self) -> list[int]:
        if isinstance(self.seeds, list):
            return list(self.seeds)
        return [self.base.training.seed + i for i in range(self.seeds)]

    def num_passes(self) -> int:
        return self.passes or self.base.training.num_passes


# --------------------------------------------------------------------------- expansion


@dataclass
class Arm:
    """One variant at one grid point (or the baseline)."""

    key: str  # "baseline" or "v{i}" / "v{i}.{j}" (variant i, grid point j)
    variant: str  # the variant's name
    variant_index: int  # -1 for the baseline
    label: str  # e.g. "sparse_l2 weight=0.0001"
    params: dict[str, Any] = field(default_factory=dict)  # "type.param" -> value, grid params only
    regularizers: list[dict[str, Any]] = field(default_factory=list)  # added to the base's

    @property
    def is_baseline(self) -> bool:
        return self.key == BASELINE

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "variant": self.variant,
            "variant_index": self.variant_index,
            "label": self.label,
            "params": self.params,
            "regularizers": self.regularizers,
            "is_baseline": self.is_baseline,
        }


@dataclass
class Run:
    """One arm at one seed: an ordinary job.

    Runs of a staged study (a searched range or a tuned baseline; trainer/study_search.py)
    also carry their ``stage`` (``tune``, ``search``, ``main``, ``confirm``), their arm
    (searched strengths are not among the expansion's arms), the passes they train when
    not the study's, and the tuned job-spec values they inherit."""

    key: str  # "{arm}/s{seed}"
    arm: str
    seed: int
    stage: str | None = None  # None: a fixed-grid study's run
    arm_obj: Arm | None = None
    passes: int | None = None
    overrides: dict[str, Any] | None = None  # dotted job-spec field -> value

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"key": self.key, "arm": self.arm, "seed": self.seed}
        if self.stage is not None:
            d["stage"] = self.stage
        return d


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
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


def _variant_name(v: StudyVariant) -> str:
    return v.name or "+".join(str(r.get("type")) for r in v.regularizers)


def _variant_axes(spec: StudySpec) -> list[list[tuple[int, str, list[Any]]]]:
    """Each variant's grid axes (regularizer index, parameter, values), checked: no
    product is built here. A variant with a range has no grid axes (see variant_ranges)."""
    return [axes for axes, _ in _variant_params(spec)]


def variant_ranges(spec: StudySpec) -> dict[int, RangeAxis]:
    """variant index -> its searched range, for the variants that give one."""
    return {i: r for i, (_, r) in enumerate(_variant_params(spec)) if r is not None}


def _variant_params(spec: StudySpec) -> list[tuple[list[tuple[int, str, list[Any]]], RangeAxis | None]]:
    models = regularizer_models()
    names: set[str] = {BASELINE}
    out: list[tuple[list[tuple[int, str, list[Any]]], RangeAxis | None]] = []
    for i, v in enumerate(spec.variants):
        vname = _variant_name(v)
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
        math.prod(len(vals) for _, _, vals in axes) for axes, rng in _variant_params(spec) if rng is None
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


def expand_arms(spec: StudySpec) -> list[Arm]:
    """The baseline, then every variant at every point of its grids (validated)."""
    arms = [Arm(key=BASELINE, variant=BASELINE, variant_index=-1, label=BASELINE)]
    for i, (v, (axes, rng)) in enumerate(zip(spec.variants, _variant_params(spec), strict=True)):
        if rng is not None:  # searched: its arms come from trainer/study_search.py
            continue
        vname = _variant_name(v)
        points = list(itertools.product(*[vals for _, _, vals in axes])) if axes else [()]
        for p, combo in enumerate(points):
            regs = copy.deepcopy(v.regularizers)
            params: dict[str, Any] = {}
            for (j, param, _), value in zip(axes, combo, strict=True):
                regs[j][param] = value
                params[f"{regs[j]['type']}.{param}"] = value
            key = f"v{i}" if not axes else f"v{i}.{p}"
            label = vname + (
                " " + " ".join(f"{k.split('.', 1)[1]}={_fmt(x)}" for k, x in params.items()) if params else ""
            )
            arms.append(
                Arm(key=key, variant=vname, variant_index=i, label=label, params=params, regularizers=regs)
            )
    return arms


def set_path(d: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted field (``training.sparse_optimizer.lr``) of a job-spec dict."""
    *head, last = path.split(".")
    for part in head:
        d = d.setdefault(part, {})
    d[last] = value


def job_spec_dict(
    spec: StudySpec,
    arm: Arm,
    seed: int,
    *,
    passes: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The job spec (as a dict) of one run: base (with a tuned baseline's ``overrides``)
    + arm's regularizers, the seed, the passes."""
    d = spec.base.model_dump(mode="json")
    for path, value in (overrides or {}).items():
        set_path(d, path, value)
    d["regularizers"] = list(d.get("regularizers") or []) + copy.deepcopy(arm.regularizers)
    d["training"]["seed"] = int(seed)
    d["training"]["num_passes"] = passes or spec.num_passes()
    return d


def _remap(err: FieldError, arm: Arm, n_base: int) -> FieldError:
    """A job-spec error of an arm, pointed at the study field it comes from."""
    loc = err.loc
    if len(loc) > 1 and loc[0] == "regularizers" and isinstance(loc[1], int) and not arm.is_baseline:
        j = loc[1] - n_base
        if j >= 0:
            return FieldError(
                ("variants", arm.variant_index, "regularizers", j, *loc[2:]), f"{err.msg} (at {arm.label})"
            )
    if arm.is_baseline:
        return err.under("base")
    return FieldError((), f"variants.{arm.variant_index} ({arm.label}): {err.line}")


def job_spec_for(
    spec: StudySpec,
    arm: Arm,
    seed: int,
    *,
    n_base: int | None = None,
    passes: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> JobSpec:
    """The validated job spec of one run; errors name the study field."""
    d = job_spec_dict(spec, arm, seed, passes=passes, overrides=overrides)
    n_base = len(spec.base.regularizers) if n_base is None else n_base
    try:
        return JobSpec.model_validate(d)
    except ValidationError as e:
        raise SpecError(errors=[_remap(err, arm, n_base) for err in validation_errors(e)]) from None


@dataclass
class Expansion:
    """A validated study: its arms, runs and cost estimate."""

    spec: StudySpec
    arms: list[Arm]
    runs: list[Run]
    seeds: list[int]
    passes: int

    @functools.cached_property
    def staged(self) -> bool:
        """A study whose later runs depend on earlier results (a searched range or a
        tuned baseline): its runs come from :func:`trainer.study_search.next_runs`, and
        ``runs`` holds only the fixed ones."""
        return bool(self.ranges) or self.spec.tune_baseline is not None

    @functools.cached_property
    def ranges(self) -> dict[int, RangeAxis]:
        return variant_ranges(self.spec)

    def arm(self, key: str) -> Arm:
        for a in self.arms:
            if a.key == key:
                return a
        raise KeyError(key)

    def arm_of(self, run: Run) -> Arm:
        return run.arm_obj or self.arm(run.arm)

    def job_spec(self, run: Run) -> JobSpec:
        return job_spec_for(self.spec, self.arm_of(run), run.seed, passes=run.passes, overrides=run.overrides)

    def max_runs(self) -> int:
        """The most runs the study can submit (every stage at its budget)."""
        if not self.staged:
            return len(self.runs)
        from trainer.study_search import stage_budget

        return int(stage_budget(self)["max_runs"])

    def estimate(self) -> dict[str, Any]:
        return estimate_cost(self)

    def plan(self) -> dict[str, Any]:
        """What the study will run: sizes, arms and the cost estimate (JSON-able)."""
        out: dict[str, Any] = {
            "runs": self.max_runs(),
            "arms": len(self.arms),
            "variants": len(self.spec.variants),
            "seeds": self.seeds,
            "passes": self.passes,
            "arm_list": [a.to_dict() for a in self.arms],
            "estimate": self.estimate(),
        }
        if self.staged:
            from trainer.study_search import stage_budget

            out["stages"] = stage_budget(self)
        return out


def expand(spec: StudySpec) -> Expansion:
    """Validate every arm's job spec and list the runs (arm-major, then seed)."""
    check_size(spec)  # counted from the grid sizes: nothing is built past the limit
    arms = expand_arms(spec)
    seeds = spec.seed_list()
    for a in arms:  # the seed never makes a spec invalid: check each arm once
        job_spec_for(spec, a, seeds[0]).check_capacity()
    ranges = variant_ranges(spec)
    for i, rng in ranges.items():  # both ends of a searched range must be valid job specs
        for value in (rng.low, rng.high):
            a = range_arm(spec, i, rng, value)
            job_spec_for(spec, a, seeds[0]).check_capacity()
    tb = spec.tune_baseline
    if tb is not None:
        base = Arm(key=BASELINE, variant=BASELINE, variant_index=-1, label=BASELINE)
        for combo in tune_points(tb):
            try:
                job_spec_for(spec, base, seeds[0], overrides=combo).check_capacity()
            except SpecError as e:
                where = ", ".join(f"{k}={_fmt(v)}" for k, v in combo.items())
                raise SpecError(
                    f"{e.message.removeprefix('base.')} (at {where})", field=("tune_baseline", "grid")
                ) from None
    runs = [Run(key=f"{a.key}/s{s}", arm=a.key, seed=s) for a in arms for s in seeds]
    exp = Expansion(spec=spec, arms=arms, runs=runs, seeds=seeds, passes=spec.num_passes())
    if exp.staged:
        from trainer.study_search import stage_budget

        n = stage_budget(exp)["max_runs"]
        if n > MAX_STUDY_RUNS:
            raise SpecError.at(
                "search",
                f"the study may run up to {n} runs; a study has at most {MAX_STUDY_RUNS}: "
                "lower search.budget_runs, points or rounds",
            )
    return exp


def tune_points(tb: TuneBaselineSpec) -> list[dict[str, Any]]:
    """Every combination of a tuned baseline's grid, in the grid's order."""
    paths = list(tb.grid)
    return [dict(zip(paths, combo, strict=True)) for combo in itertools.product(*tb.grid.values())]


def fmt_value(v: float) -> str:
    """A searched strength as it appears in keys and labels (4 significant digits)."""
    return f"{v:.4g}"


def range_arm(
    spec: StudySpec, variant_index: int, rng: RangeAxis, value: float, *, confirm: bool = False
) -> Arm:
    """The arm of a searched variant at one strength; its key is deterministic from the
    value (``v{i}~{value}``), so a restarted study regenerates the same runs."""
    v = spec.variants[variant_index]
    regs = copy.deepcopy(v.regularizers)
    val: float | int = int(round(value)) if rng.integer else value
    regs[rng.reg_index][rng.param] = val
    vname = _variant_name(v)
    return Arm(
        key=f"v{variant_index}~{fmt_value(value)}",
        variant=vname,
        variant_index=variant_index,
        label=f"{vname} {rng.param}={_fmt(val)}" + (" (searched)" if confirm else ""),
        params={rng.key: val},
        regularizers=regs,
    )


def _examples_per_pass(job: JobSpec, days: list[int]) -> int | None:
    d = job.data
    if d.source != DataSource.SYNTHETIC:
        return d.max_examples_per_day * len(days) if d.max_examples_per_day else None
    per_day = d.synthetic.examples_per_day
    if d.max_examples_per_day:
        per_day = min(per_day, d.max_examples_per_day)
    return per_day * len(days)


def estimate_cost(exp: Expansion) -> dict[str, Any]:
    """Runs, example-passes and a rough duration (one run after another) of a study."""
    base = exp.spec.base
    train = _examples_per_pass(base, base.data.train_days)
    eval_days = list(base.data.test_days) + list(getattr(base.data, "validation_days", None) or [])
    evaluate = _examples_per_pass(base, eval_days)
    n = exp.max_runs()  # a staged study: every stage at its budget (an upper bound)
    out: dict[str, Any] = {
        "runs": n,
        "passes_per_run": exp.passes,
        "train_examples_per_pass": train,
        "train_examples_total": None if train is None else n * exp.passes * train,
        "workers_per_run": base.scaling.num_workers,
        "assumed_examples_per_s": ASSUMED_EXAMPLES_PER_S,
        "assumed_run_startup_s": ASSUMED_RUN_STARTUP_S,
        "sequential_seconds": None,
        "note": "rough: assumes the throughput and start-up above; runs in parallel divide it",
    }
    if train is not None:
        per_run = ASSUMED_RUN_STARTUP_S + exp.passes * (train + (evaluate or 0) / 4) / ASSUMED_EXAMPLES_PER_S
        out["sequential_seconds"] = round(n * per_run, 1)
    else:
        out["note"] = f"no size known for data.source {base.data.source.value}: duration not estimated"
    return out


# --------------------------------------------------------------------------- loading


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
