"""A study expanded: its arms (the baseline, then every variant at every grid point; a
searched strength's arm), each run's validated job spec (errors name the study field),
the :class:`Expansion` and the cost estimate shown before the study runs."""

from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from trainer.errors import FieldError, SpecError
from trainer.spec import DataSource, JobSpec, validation_errors
from trainer.study_grid import RangeAxis, check_size, fmt_param, variant_name, variant_params, variant_ranges
from trainer.study_models import BASELINE, MAX_STUDY_RUNS, Arm, Run, StudySpec, TuneBaselineSpec

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


def expand_arms(spec: StudySpec) -> list[Arm]:
    """The baseline, then every variant at every point of its grids (validated)."""
    arms = [Arm(key=BASELINE, variant=BASELINE, variant_index=-1, label=BASELINE)]
    for i, (v, (axes, rng)) in enumerate(zip(spec.variants, variant_params(spec), strict=True)):
        if rng is not None:  # searched: its arms come from trainer/study_search.py
            continue
        vname = variant_name(v)
        points = list(itertools.product(*[vals for _, _, vals in axes])) if axes else [()]
        for p, combo in enumerate(points):
            regs = copy.deepcopy(v.regularizers)
            params: dict[str, Any] = {}
            for (j, param, _), value in zip(axes, combo, strict=True):
                regs[j][param] = value
                params[f"{regs[j]['type']}.{param}"] = value
            key = f"v{i}" if not axes else f"v{i}.{p}"
            label = vname + (
                " " + " ".join(f"{k.split('.', 1)[1]}={fmt_param(x)}" for k, x in params.items())
                if params
                else ""
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
        from trainer.study_search_plan import stage_budget

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
            from trainer.study_search_plan import stage_budget

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
                where = ", ".join(f"{k}={fmt_param(v)}" for k, v in combo.items())
                raise SpecError(
                    f"{e.message.removeprefix('base.')} (at {where})", field=("tune_baseline", "grid")
                ) from None
    runs = [Run(key=f"{a.key}/s{s}", arm=a.key, seed=s) for a in arms for s in seeds]
    exp = Expansion(spec=spec, arms=arms, runs=runs, seeds=seeds, passes=spec.num_passes())
    if exp.staged:
        from trainer.study_search_plan import stage_budget

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
    vname = variant_name(v)
    return Arm(
        key=f"v{variant_index}~{fmt_value(value)}",
        variant=vname,
        variant_index=variant_index,
        label=f"{vname} {rng.param}={fmt_param(val)}" + (" (searched)" if confirm else ""),
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
