"""The study spec's models: what a study file says (:class:`StudySpec`, its variants,
search and tuned-baseline settings, pydantic, validated field by field) and what it
expands to (an :class:`Arm` per variant x grid point, a :class:`Run` per arm x seed).

Torch-free like :mod:`trainer.spec`; loading a study file is :mod:`trainer.study_spec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainer.errors import FieldValueError
from trainer.spec import JobSpec

# A study never expands past this many runs, whoever submits it (the service also
# applies a per-owner limit, RECTRAIN_STUDY_MAX_RUNS).
MAX_STUDY_RUNS = 5000
MAX_SEEDS = 100
MAX_GRID_VALUES = 50
BASELINE = "baseline"


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
