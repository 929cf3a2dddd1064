"""Terminal table of NE per pass."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def format_pass_table(result: dict[str, Any]) -> str:
    """One row per pass: train/test NE, calibration, AUC, NE per stratum, throughput."""
    head = (
        f"{'pass':>4}  {'train NE':>8}  {'test NE':>8}  {'calib':>6}  {'AUC':>6}  "
        f"{'NE freq':>8}  {'NE med':>8}  {'NE rare':>8}  {'ex/s':>9}"
    )
    lines = [head, "-" * len(head)]
    best = result.get("best_pass")
    for p in result.get("passes", []):
        st = p.get("test_ne_by_stratum") or {}
        mark = " *" if p["pass"] == best else ""
        lines.append(
            f"{p['pass'] + 1:>4}  {_fmt(p.get('train_ne')):>8}  {_fmt(p.get('test_ne')):>8}  "
            f"{_fmt(p.get('test_calibration'), '.3f'):>6}  {_fmt(p.get('test_auc')):>6}  "
            f"{_fmt(st.get('frequent')):>8}  {_fmt(st.get('medium')):>8}  {_fmt(st.get('rare')):>8}  "
            f"{_fmt(p.get('examples_per_s'), ',.0f'):>9}{mark}"
        )
    if best is not None:
        lines.append(f"best test NE {result['best_test_ne']:.4f} at pass {best + 1} (*)")
    return "\n".join(lines)
