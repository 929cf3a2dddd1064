"""Study statistics: paired differences against the same-seed baseline, with t-intervals,
multiplicity-adjusted p-values, and choices made on validation NE only.

The answer has two comparisons, each paired by seed (``Δ_s = NE(arm, seed s) −
NE(baseline, seed s)``; lower NE is better):

1. **The headline: what you would ship.** Each run stops at its own validation-selected
   pass (lowest validation NE, the earliest on ties) and its test NE there is compared with
   the baseline's run of the same seed at *the baseline's* validation-selected pass. It
   answers "does a regularizer make extra passes pay, compared with simply stopping the
   baseline early?". This is the first table and the first sentence of every answer.
2. **The same pass (second table):** after k passes against the baseline after k passes;
   it answers "does the regularizer stop the damage after k passes".

Per arm and comparison: mean Δ over the seeds both runs finished, a 95% Student-t
interval ``mean ± t(0.975, n−1) · sd/√n`` (``scipy.stats.t``), the sd of Δ, the seeds
favouring the arm, the two-sided paired t-test p-value, and the **Holm-adjusted** p over
the arms of that comparison; an arm "beats" or is "worse" only when its adjusted p is
below 0.05 (docs/studies.md: why Holm, not Dunnett). A power line gives the smallest Δ
the study's seeds can detect at 80% power and the seeds needed for a given Δ.

**Choices use validation NE only**: the pass of each run, the best strength per
regularizer, the best arm and the ranking; test NE is reported for what was chosen
(``tests/services/test_svc_study_stats.py`` permutes the test values and checks that no
choice changes). Input is plain data (per-run per-pass dicts, as in the jobs' ``pass``
events), so this package needs no Redis.

The package, by concern (every name is importable from ``services.study_stats``):
``common`` (the constants and per-seed helpers), ``paired`` (paired Δ, t-interval and
p), ``multiplicity`` (Holm, power), ``selection`` (:func:`analyze`: the choices on
validation, the headline against stopping early, the same-pass comparison),
``references`` (oracle, constant and logistic-regression NE), ``curves`` (strength
curves), ``sentences``, ``tables`` (text and Markdown), ``export`` (CSV) and ``walls``
(where a study's time went). ``python -m services.study_stats STUDY.json`` runs
:func:`main`.
"""

from __future__ import annotations

from services.study_stats.common import (
    ALPHA,
    CHOICE_NOTE,
    CONFIDENCE,
    EXTRA_METRICS,
    HEADLINE_WHAT,
    ONE_SEED_NOTE,
    POWER,
    STRATA,
)
from services.study_stats.curves import strength_curves
from services.study_stats.export import CSV_COLUMNS, to_csv
from services.study_stats.multiplicity import adjust, detectable_delta, holm, seeds_needed, ttest_power
from services.study_stats.paired import paired_delta, t_interval, t_pvalue
from services.study_stats.references import references_line
from services.study_stats.selection import analyze, selected_pass
from services.study_stats.sentences import (
    answer_sentence,
    fmt_p,
    headline_sentence,
    power_sentence,
    search_sentence,
    tuned_sentence,
)
from services.study_stats.tables import (
    SELECTED_EXTRA_HEAD,
    format_table,
    search_text,
    selected_extra_cells,
    to_markdown,
)
from services.study_stats.walls import format_wall_totals, wall_totals

__all__ = [
    "ALPHA",
    "CHOICE_NOTE",
    "CONFIDENCE",
    "CSV_COLUMNS",
    "EXTRA_METRICS",
    "HEADLINE_WHAT",
    "ONE_SEED_NOTE",
    "POWER",
    "STRATA",
    "adjust",
    "analyze",
    "answer_sentence",
    "detectable_delta",
    "fmt_p",
    "format_table",
    "format_wall_totals",
    "headline_sentence",
    "holm",
    "main",
    "paired_delta",
    "power_sentence",
    "references_line",
    "search_sentence",
    "search_text",
    "seeds_needed",
    "SELECTED_EXTRA_HEAD",
    "selected_extra_cells",
    "selected_pass",
    "strength_curves",
    "t_interval",
    "t_pvalue",
    "to_csv",
    "to_markdown",
    "ttest_power",
    "tuned_sentence",
    "wall_totals",
]


def main(argv: list[str] | None = None) -> int:
    """``python -m services.study_stats STUDY.json``: the answer of a finished study
    (``rectrain study --local``'s study.json, or GET /v1/studies/{id}) as Markdown;
    ``--html OUT.html`` also writes the self-contained report page."""
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m services.study_stats", description=main.__doc__)
    ap.add_argument("study_json")
    ap.add_argument("--html", default=None, help="also write the HTML report here")
    args = ap.parse_args(argv)
    doc = json.loads(Path(args.study_json).read_text())
    print(to_markdown(doc["results"]))
    if args.html:
        from services.study_report import render_report

        Path(args.html).write_text(render_report(doc))
    return 0
