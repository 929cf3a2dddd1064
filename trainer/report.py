"""Terminal table of NE per pass, the pass selected by validation NE, and the oracle."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def format_headline(result: dict[str, Any]) -> list[str]:
    """The selected pass (or "no validation data" and the last pass) and the oracle NE."""
    lines = []
    sel = result.get("selected_pass")
    if sel is not None:
        lines.append(
            f"selected pass {sel + 1} (*, lowest validation NE {_fmt(result.get('val_ne_at_selected'))}): "
            f"test NE {_fmt(result.get('test_ne_at_selected'))}"
        )
    elif result.get("last_pass") is not None:
        lines.append(
            f"no validation data, no pass selected: last pass {result['last_pass'] + 1} "
            f"test NE {_fmt(result.get('test_ne_at_last'))}"
        )
    if result.get("oracle_val_ne") is not None or result.get("oracle_test_ne") is not None:
        lines.append(
            f"oracle NE (true click probabilities): validation {_fmt(result.get('oracle_val_ne'))}  "
            f"test {_fmt(result.get('oracle_test_ne'))}"
        )
    return lines


def format_pass_table(result: dict[str, Any]) -> str:
    """One row per pass: train/validation/test NE, test calibration, AUC, NE per
    stratum, throughput; ``*`` marks the pass selected by validation NE."""
    head = (
        f"{'pass':>4}  {'train NE':>8}  {'val NE':>8}  {'test NE':>8}  {'calib':>6}  {'AUC':>6}  "
        f"{'NE freq':>8}  {'NE med':>8}  {'NE rare':>8}  {'ex/s':>9}"
    )
    lines = [head, "-" * len(head)]
    sel = result.get("selected_pass")
    for p in result.get("passes", []):
        st = p.get("test_ne_by_stratum") or {}
        mark = " *" if p["pass"] == sel else ""
        lines.append(
            f"{p['pass'] + 1:>4}  {_fmt(p.get('train_ne')):>8}  {_fmt(p.get('val_ne')):>8}  "
            f"{_fmt(p.get('test_ne')):>8}  "
            f"{_fmt(p.get('test_calibration'), '.3f'):>6}  {_fmt(p.get('test_auc')):>6}  "
            f"{_fmt(st.get('frequent')):>8}  {_fmt(st.get('medium')):>8}  {_fmt(st.get('rare')):>8}  "
            f"{_fmt(p.get('examples_per_s'), ',.0f'):>9}{mark}"
        )
    lines += format_headline(result)
    return "\n".join(lines)
