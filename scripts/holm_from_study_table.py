"""Holm-adjusted p-values recomputed from a study's published Markdown table.

For studies whose study.json is gone but whose answer table (``python -m
services.study_stats``, cells ``mean [ci_low, ci_high] k/n``) is in the docs: the paired
t-test's p follows from the interval (se = half-width / t(0.975, n-1), t = mean / se),
and Holm adjusts over the arms of each column. The cells carry 4 decimals, so the p are
approximate. Usage::

    .venv/bin/python scripts/holm_from_study_table.py docs/study-results.md

prints, for every answer table in the file, the arms whose raw interval excludes 0 and
their Holm-adjusted p, per column.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.study_stats import fmt_p, holm  # noqa: E402

# Hand-edited docs write the typographic minus (U+2212); cells are read with it as "-".
MINUS = str.maketrans({"\u2212": "-"})
CELL = re.compile(r"\**([+-]\d+\.\d+) \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\](?: p=[<\d.]+)? (\d+)/(\d+)\**")


def cell_p(mean: float, lo: float, hi: float, n: int) -> float:
    """Two-sided paired t-test p from a 95% t-interval over n seeds."""
    half = (hi - lo) / 2
    if half <= 0:
        return 1.0 if mean == 0 else 0.0
    se = half / float(stats.t.ppf(0.975, n - 1))
    return float(2 * stats.t.sf(abs(mean) / se, n - 1))


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table whose header names a Δ test NE column."""
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("| arm |") and "Δ test NE" in lines[i]:
            head = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            out.append((head, rows))
        i += 1
    return out


def main(argv: list[str]) -> int:
    text = Path(argv[1]).read_text()
    for t, (head, rows) in enumerate(tables(text), 1):
        print(f"table {t}: {len(rows) - 1} arms")
        for col in range(1, len(head)):
            cells = []
            for r in rows:
                m = CELL.fullmatch(r[col].translate(MINUS)) if col < len(r) else None
                cells.append(None if m is None else (r[0], float(m[1]), float(m[2]), float(m[3]), int(m[5])))
            ps = [None if c is None else cell_p(c[1], c[2], c[3], c[4]) for c in cells]
            adj = holm(ps)
            raw_wins = [
                (c, a) for c, a in zip(cells, adj, strict=True) if c is not None and (c[2] > 0 or c[3] < 0)
            ]
            survive = [(c, a) for c, a in raw_wins if a is not None and a < 0.05]
            print(
                f"  {head[col]}: {len(raw_wins)} raw intervals exclude 0, "
                f"{len(survive)} with Holm-adjusted p < 0.05"
            )
            for c, a in sorted(raw_wins, key=lambda x: x[1] or 1):
                print(f"    {c[0]:<50} {c[1]:+.4f}  Holm p {fmt_p(a)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
