"""A staged study's plan (torch-free): each searched variant's settings, the seeds the
search and the tuning use (after the study's own), the strengths a search tries (round
1 evenly spaced over the range, refinement points between two strengths) and the most
runs each stage may take (:func:`stage_budget`, what the plan and the size check show).
The rounds themselves are :func:`trainer.study_search.next_runs`."""

from __future__ import annotations

import math
from typing import Any

from trainer.errors import SpecError
from trainer.study_expand import Expansion, fmt_value, tune_points
from trainer.study_grid import RangeAxis
from trainer.study_models import SearchSpec


def search_config(exp: Expansion, variant_index: int) -> SearchSpec:
    return exp.spec.variants[variant_index].search or exp.spec.search or SearchSpec()


def extra_seeds(exp: Expansion, n: int) -> list[int]:
    """The first ``n`` seeds after the study's own (search and tuning seeds)."""
    first = max(exp.seeds) + 1
    return [first + k for k in range(n)]


def schedule_runs(cfg: SearchSpec) -> list[int]:
    """The most runs each round of one searched variant needs (refinement included)."""
    s = cfg.seeds_per_round
    n_active = cfg.points
    out = [cfg.points * s]
    for r in range(1, cfg.rounds):
        keep = math.ceil(n_active / 2)
        out.append(keep * s + 2 * (r + 1) * s)
        n_active = keep + 2
    return out


def stage_budget(exp: Expansion) -> dict[str, Any]:
    """The plan of a staged study: each stage's runs at most, and the total; raises
    :class:`SpecError` when a budget cannot hold a search's first round."""
    spec = exp.spec
    out: dict[str, Any] = {"fixed_runs": len(exp.runs), "confirmation_seeds": list(exp.seeds)}
    total = len(exp.runs)
    tb = spec.tune_baseline
    if tb is not None:
        n = len(tune_points(tb)) * tb.seeds
        out["tune_baseline"] = {
            "grid": tb.grid,
            "passes": tb.passes,
            "seeds": extra_seeds(exp, tb.seeds),
            "runs": n,
        }
        total += n
    searches = []
    base_seeds = 0
    for i, rng in exp.ranges.items():
        cfg = search_config(exp, i)
        where = f"variants.{i}.search" if spec.variants[i].search is not None else "search"
        per_round = schedule_runs(cfg)
        bound = sum(per_round)
        budget = cfg.budget_runs if cfg.budget_runs is not None else bound
        if budget < per_round[0]:
            raise SpecError.at(
                f"{where}.budget_runs",
                f"{budget} runs cannot hold round 1 of variants.{i} "
                f"(points {cfg.points} x seeds_per_round {cfg.seeds_per_round} = {per_round[0]} runs); "
                f"raise it to at least {per_round[0]}, or lower points or seeds_per_round",
            )
        runs = min(budget, bound)
        searches.append(
            {
                "variant": exp.spec.variants[i].name
                or "+".join(str(r.get("type")) for r in spec.variants[i].regularizers),
                "variant_index": i,
                **rng.to_dict(),
                "points": cfg.points,
                "rounds": cfg.rounds,
                "seeds_per_round": cfg.seeds_per_round,
                "budget_runs": budget,
                "max_runs_per_round": per_round,
                "max_runs": runs,
                "confirm_runs": len(exp.seeds),
            }
        )
        total += runs + len(exp.seeds)
        base_seeds = max(base_seeds, cfg.rounds * cfg.seeds_per_round)
    if searches:
        out["search"] = searches
        out["search_baseline_runs"] = base_seeds
        total += base_seeds
    out["max_runs"] = total
    return out


def grid_points(rng: RangeAxis, n: int) -> list[float]:
    if rng.scale == "log":
        lo, hi = math.log(rng.low), math.log(rng.high)
        raw = [math.exp(lo + (hi - lo) * k / (n - 1)) for k in range(n)]
    else:
        raw = [rng.low + (rng.high - rng.low) * k / (n - 1) for k in range(n)]
    out: list[float] = []
    for x in raw:
        v = _round(rng, x)
        if v not in out:
            out.append(v)
    return out


def _round(rng: RangeAxis, x: float) -> float:
    v = float(round(x)) if rng.integer else float(fmt_value(x))
    return min(max(v, rng.low), rng.high)


def between(rng: RangeAxis, a: float, b: float) -> float:
    return _round(rng, math.sqrt(a * b) if rng.scale == "log" else (a + b) / 2)
