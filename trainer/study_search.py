"""Staged studies: a strength searched over a range, and a tuned baseline (torch-free).

A study is *staged* when a variant gives a range instead of a grid
(``weight: {log_range: [1e-6, 1e-2]}``) or when it tunes the baseline first
(``tune_baseline``). Its later runs depend on earlier results, so both execution paths
(the service's reconciler, services/studies.py, and ``rectrain study --local``,
services/study_cli.py) ask :func:`next_runs` — a pure function of the spec and the
results of the runs that have ended — for every run known so far, submit the ones they
have not, and ask again when those have ended. Run keys are deterministic (a searched
strength's arm is ``v{i}~{value}``, a tuning point ``tune.{j}``), so a restarted service
regenerates exactly the runs it had submitted and goes on.

Stages, in order:

1. **tune** (``tune_baseline``): the baseline at every combination of the grid, on
   ``seeds`` tuning seeds, ``passes`` passes each; the combination with the lowest mean
   validation NE after ``passes`` passes is chosen; every later run inherits it.
2. **main** and **search round 1**: the fixed arms (baseline and grid arms) on the
   study's seeds, and round 1 of every searched variant: ``points`` strengths, evenly
   spaced over the range (log-spaced for ``log_range``) on ``seeds_per_round`` search
   seeds, with the baseline on those seeds.
3. **search rounds 2..rounds**: each round scores every active strength by its mean
   validation Δ vs the baseline (each run at its validation-selected pass, paired by
   seed, over every search seed so far), keeps the better half (ceil), adds
   ``seeds_per_round`` new seeds to the survivors and inserts a refinement strength
   between the best one and each of its neighbours (run on every search seed so far).
   A round that does not fit the variant's ``budget_runs`` drops its refinement points,
   or, if still too big (or if one strength would be left alone), ends the search.
4. **confirm**: the chosen strength (the best active one after the last round) on the
   study's own seeds, which no search run used: its reported Δ is not inflated by the
   choice. The headline of a searched variant is this arm.

Search seeds and tuning seeds come after the study's largest seed (``max(seeds) + 1 …``)
and never overlap them. Everything here reads validation NE only.

The plan these stages follow (each search's settings, its seeds, the strengths it tries
and each stage's most runs) is :mod:`trainer.study_search_plan`; this module runs the
rounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainer.study_expand import Expansion, fmt_value, range_arm, tune_points
from trainer.study_grid import RangeAxis, fmt_param
from trainer.study_models import BASELINE, Arm, Run, SearchSpec
from trainer.study_search_plan import between, extra_seeds, grid_points, schedule_runs, search_config
from trainer.study_search_plan import stage_budget as stage_budget  # importable from here as before

# run key -> the run's per-pass results once it has ended (None or [] when it failed)
Finished = Mapping[str, list[dict[str, Any]] | None]


# --------------------------------------------------------------------------- scoring


def _num(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def val_at_selected(passes: list[dict[str, Any]] | None) -> float | None:
    """A run's validation NE at its validation-selected pass (the lowest; the earliest on ties)."""
    vals = [(v, int(p.get("pass", 0))) for p in passes or [] if (v := _num(p.get("val_ne"))) is not None]
    return min(vals)[0] if vals else None


def val_after(passes: list[dict[str, Any]] | None, k: int) -> float | None:
    """A run's validation NE after ``k`` passes."""
    for p in passes or []:
        if p.get("pass") == k - 1:
            return _num(p.get("val_ne"))
    return None


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


# --------------------------------------------------------------------------- the stages


@dataclass
class _Search:
    index: int
    rng: RangeAxis
    cfg: SearchSpec
    seeds: list[int]  # this variant's search seed pool (rounds x seeds_per_round)
    active: list[float] = field(default_factory=list)
    evaluated: dict[float, list[int]] = field(default_factory=dict)  # value -> seeds run
    first_round: dict[float, int] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    used: int = 0
    chosen: float | None = None
    stopped: str | None = None  # "rounds" | "budget" | "converged" once done

    @property
    def budget(self) -> int:
        return self.cfg.budget_runs if self.cfg.budget_runs is not None else sum(schedule_runs(self.cfg))

    def key(self, value: float) -> str:
        return f"v{self.index}~{fmt_value(value)}"


@dataclass
class Stages:
    """Every run a staged study has generated so far, and where it stands."""

    runs: list[Run]
    done: bool  # no more runs will be generated (the last ones may still be running)
    stage: str  # what the study is at, in words
    arms: list[Arm]  # the arms of the answer: the fixed ones, then each confirmed strength
    tuned: dict[str, Any] | None = None
    overrides: dict[str, Any] | None = None
    search: list[dict[str, Any]] = field(default_factory=list)

    def analysis_runs(self) -> list[Run]:
        """The runs the answer is computed from: the fixed arms and the confirmations
        on the study's seeds (never a search or tuning run)."""
        return [r for r in self.runs if r.stage in ("main", "confirm")]

    def summary(self) -> dict[str, Any]:
        return {"stage": self.stage, "done": self.done, "tuned_baseline": self.tuned, "search": self.search}


def _ended(runs: list[Run], finished: Finished) -> bool:
    return all(r.key in finished for r in runs)


def next_runs(exp: Expansion, finished: Finished) -> Stages:
    """Every run of a staged study known from the results so far (pure; deterministic).

    ``finished`` maps the key of every run that has ended to its per-pass results (None
    or [] for a failed run). The runs listed are those of the stages reached; the last
    stage's runs may not have ended. ``done``: no further run will be generated."""
    spec = exp.spec
    runs: list[Run] = []
    overrides: dict[str, Any] | None = None
    tuned: dict[str, Any] | None = None
    tb = spec.tune_baseline
    if tb is not None:
        seeds = extra_seeds(exp, tb.seeds)
        pts = tune_points(tb)
        tune_arms = [
            Arm(
                key=f"tune.{j}",
                variant=BASELINE,
                variant_index=-1,
                label="baseline " + " ".join(f"{k}={fmt_param(v)}" for k, v in combo.items()),
                params=dict(combo),
            )
            for j, combo in enumerate(pts)
        ]
        tune_runs = [
            Run(
                key=f"{a.key}/s{s}",
                arm=a.key,
                seed=s,
                stage="tune",
                arm_obj=a,
                passes=tb.passes,
                overrides=combo,
            )
            for a, combo in zip(tune_arms, pts, strict=True)
            for s in seeds
        ]
        runs += tune_runs
        scored: list[dict[str, Any]] = []
        for a, combo in zip(tune_arms, pts, strict=True):
            vals = [
                v for s in seeds if (v := val_after(finished.get(f"{a.key}/s{s}"), tb.passes)) is not None
            ]
            scored.append({"arm": a.key, "values": combo, "mean_val_ne": _mean(vals), "n": len(vals)})
        tuned = {
            "grid": tb.grid,
            "passes": tb.passes,
            "seeds": seeds,
            "chosen_on": f"validation NE after {tb.passes} pass{'es' if tb.passes > 1 else ''}",
            "points": scored,
            "chosen": None,
        }
        if not _ended(tune_runs, finished):
            return Stages(runs, False, "tuning the baseline", list(exp.arms), tuned=tuned)
        ok = [p for p in scored if p["mean_val_ne"] is not None]
        if not ok:  # every tuning run failed: nothing to choose, the study cannot go on
            return Stages(
                runs, True, "tuning failed: no tuning run reported validation NE", list(exp.arms), tuned=tuned
            )
        best = min(ok, key=lambda p: p["mean_val_ne"])  # the first in grid order on ties
        overrides = dict(best["values"])
        tuned["chosen"] = overrides

    runs += [Run(key=r.key, arm=r.arm, seed=r.seed, stage="main", overrides=overrides) for r in exp.runs]

    searches = []
    for i, rng in exp.ranges.items():
        cfg = search_config(exp, i)
        s = _Search(i, rng, cfg, extra_seeds(exp, cfg.rounds * cfg.seeds_per_round))
        s.active = grid_points(rng, cfg.points)
        searches.append(s)

    def base_runs(seeds: set[int]) -> list[Run]:
        return [
            Run(key=f"{BASELINE}/s{x}", arm=BASELINE, seed=x, stage="search", overrides=overrides)
            for x in sorted(seeds)
        ]

    emitted: set[str] = set()
    base_seeds: set[int] = set()
    r = 0
    while any(s.stopped is None for s in searches):
        round_runs: list[Run] = []
        for s in searches:
            if s.stopped is not None:
                continue
            seeds_now = s.seeds[: (r + 1) * s.cfg.seeds_per_round]
            base_seeds.update(seeds_now)
            for value in s.active:
                s.first_round.setdefault(value, r + 1)
                arm = range_arm(spec, s.index, s.rng, value)
                for seed in seeds_now:
                    k = f"{arm.key}/s{seed}"
                    if k in emitted:
                        continue
                    emitted.add(k)
                    s.evaluated.setdefault(value, []).append(seed)
                    s.used += 1
                    round_runs.append(
                        Run(key=k, arm=arm.key, seed=seed, stage="search", arm_obj=arm, overrides=overrides)
                    )
        round_runs = [
            *(b for b in base_runs(base_seeds) if b.key not in emitted),
            *round_runs,
        ]
        emitted.update(b.key for b in round_runs)
        runs += round_runs
        if not _ended(round_runs, finished):
            return Stages(
                runs,
                False,
                f"search round {r + 1}",
                list(exp.arms),
                tuned=tuned,
                overrides=overrides,
                search=[_summary(exp, s, finished) for s in searches],
            )
        for s in searches:
            if s.stopped is not None:
                continue
            scores = {v: _score(s, v, finished) for v in s.active}
            ranked = sorted(s.active, key=lambda v: (scores[v] if scores[v] is not None else math.inf, v))
            keep = ranked[: max(1, math.ceil(len(ranked) / 2))]
            s.rounds.append(
                {
                    "round": r + 1,
                    "points": sorted(s.active),
                    "seeds": s.seeds[: (r + 1) * s.cfg.seeds_per_round],
                    "kept": sorted(keep) if r + 1 < s.cfg.rounds else [ranked[0]],
                }
            )
            if all(scores[v] is None for v in s.active):  # every run failed: nothing to choose
                s.chosen, s.stopped = None, "no validation results"
                s.rounds[-1]["kept"] = []
                continue
            if r + 1 >= s.cfg.rounds:
                s.chosen, s.stopped = ranked[0], "rounds"
                continue
            top = ranked[0]
            values = sorted(s.evaluated)
            at = values.index(top)
            refine = []
            for nb in (values[at - 1] if at > 0 else None, values[at + 1] if at + 1 < len(values) else None):
                if nb is None:
                    continue
                mid = between(s.rng, top, nb)
                if mid not in s.evaluated and mid not in refine:
                    refine.append(mid)
            sp = s.cfg.seeds_per_round
            cost_keep = len(keep) * sp
            cost_refine = len(refine) * (r + 2) * sp
            cut = s.used + cost_keep + cost_refine > s.budget
            if cut:
                refine = []
            if (cut and s.used + cost_keep > s.budget) or len(keep) + len(refine) < 2:
                # nothing fits, or one strength is left with nothing to compare: the choice is made
                s.chosen, s.stopped = top, "budget" if cut else "converged"
                s.rounds[-1]["kept"] = [top]
                continue
            s.active = sorted(keep + refine)
        r += 1

    arms = list(exp.arms)
    for s in searches:
        if s.chosen is None:
            continue
        arm = range_arm(spec, s.index, s.rng, s.chosen, confirm=True)
        arms.append(arm)
        runs += [
            Run(
                key=f"{arm.key}/s{seed}",
                arm=arm.key,
                seed=seed,
                stage="confirm",
                arm_obj=arm,
                overrides=overrides,
            )
            for seed in exp.seeds
        ]
    return Stages(
        runs,
        True,
        "confirming" if searches else "main",
        arms,
        tuned=tuned,
        overrides=overrides,
        search=[_summary(exp, s, finished) for s in searches],
    )


def _score(s: _Search, value: float, finished: Finished) -> float | None:
    """Mean validation Δ of one strength vs the baseline over the search seeds it ran."""
    deltas = []
    for seed in s.evaluated.get(value, []):
        v = val_at_selected(finished.get(f"{s.key(value)}/s{seed}"))
        b = val_at_selected(finished.get(f"{BASELINE}/s{seed}"))
        if v is not None and b is not None:
            deltas.append(v - b)
    return _mean(deltas)


def _summary(exp: Expansion, s: _Search, finished: Finished) -> dict[str, Any]:
    points = []
    for value in sorted(s.evaluated):
        seeds = s.evaluated[value]
        points.append(
            {
                "value": value,
                "arm": s.key(value),
                "val_delta_mean": _score(s, value, finished),
                "seeds": len(seeds),
                "first_round": s.first_round.get(value),
            }
        )
    v = exp.spec.variants[s.index]
    return {
        "variant": v.name or "+".join(str(r.get("type")) for r in v.regularizers),
        "variant_index": s.index,
        **s.rng.to_dict(),
        "points_first_round": s.cfg.points,
        "rounds_planned": s.cfg.rounds,
        "seeds_per_round": s.cfg.seeds_per_round,
        "budget_runs": s.budget,
        "runs_used": s.used,
        "search_seeds": sorted({x for seeds in s.evaluated.values() for x in seeds}),
        "confirmation_seeds": list(exp.seeds),
        "rounds": s.rounds,
        "points": points,
        "chosen": s.chosen,
        "chosen_arm": s.key(s.chosen) if s.chosen is not None else None,
        "stopped": s.stopped,
        "chosen_on": "mean validation Δ NE vs the baseline at the selected pass, over the search seeds",
    }
