"""The answer as tables: text (``rectrain study``) and Markdown (docs, reports)."""

from __future__ import annotations

from typing import Any

from services.study_stats.common import CHOICE_NOTE, STRATA
from services.study_stats.references import references_line
from services.study_stats.sentences import fmt_ci, fmt_num, fmt_p, power_sentence


def headline_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The baseline, then the arms in validation order (unranked arms last)."""
    sel = results.get("selected", [])
    h = results.get("headline") or {}
    by = {r["arm"]: r for r in sel}
    order = [results.get("baseline"), *h.get("ranking", [])]
    rows = [by[k] for k in order if k in by]
    return rows + [r for r in sel if r["arm"] not in order]


# the headers of selected_extra_cells' cells, in their order
SELECTED_EXTRA_HEAD = ("train NE", "calibration", "AUC", *(f"Δ {s}" for s in STRATA))


def selected_extra_cells(r: dict[str, Any], strata: dict[str, Any]) -> list[str]:
    """An arm's cells beside its headline Δ (Markdown and the HTML report alike): train
    NE, calibration and AUC at the selected pass, then each frequency stratum's Δ test NE
    (the baseline's own NE on its row)."""
    return [
        fmt_num(r.get("mean_train_ne_at_selected")),
        fmt_num(r.get("mean_test_calibration_at_selected"), ".3f"),
        fmt_num(r.get("mean_test_auc_at_selected"), ".3f"),
        *(
            "–"
            if s not in strata
            else fmt_num(strata[s]["delta"]["mean"], "+.4f")
            if strata[s].get("delta")
            else fmt_num(strata[s].get("mean"))
            for s in STRATA
        ),
    ]


def format_table(results: dict[str, Any]) -> str:
    """The answer as text: the headline (vs stopping the baseline early) first, then
    per pass count each arm's mean test NE and Δ with its interval and Holm p."""
    h = results.get("headline") or {}
    lines = []
    if h:
        lines.append(h["sentence"])
        for st in results.get("stage_sentences") or []:
            lines.append(st)
        lines += search_text(results)
        lines.append("")
        lines.append(f"what you would ship: {h['comparison']}; ranked on validation NE")
        lines.append(
            f"  {'#':>3} {'arm':<34} {'passes':>7} {'Δ val':>8} {'test NE':>8} {'Δ test':>8} "
            f"{'95% CI':>20} {'Holm p':>7} {'sd Δ':>7} {'seeds':>5} {'train NE':>8} {'calib':>6} {'AUC':>6}"
        )
        for r in headline_rows(results):
            d = r.get("delta_test_ne_at_selected")
            dv = r.get("delta_val_ne_at_selected")
            passes = ",".join("-" if p is None else str(p) for p in r["selected_pass_per_seed"].values())
            is_base = r["arm"] == results.get("baseline")
            rank = "" if r.get("rank") is None else str(r["rank"])
            if is_base:
                mid = [
                    f"{'baseline':>8}",
                    f"{'seed sd ' + fmt_num(r.get('sd_test_ne_at_selected')):>20}",
                    " " * 7,
                    " " * 7,
                    " " * 5,
                ]
            else:
                dd = d or {}
                seeds = f"{dd['favouring']}/{dd['n']}" if d else ""
                mid = [
                    f"{fmt_num(dd.get('mean'), '+.4f'):>8}",
                    f"{fmt_ci(d):>20}",
                    f"{fmt_p(dd.get('p_adj')):>7}",
                    f"{fmt_num(dd.get('sd')):>7}",
                    f"{seeds:>5}",
                ]
            cells = [
                f"  {rank:>3}",
                f"{r['label'][:34]:<34}",
                f"{passes[:7]:>7}",
                f"{(fmt_num(dv['mean'], '+.4f') if dv else ''):>8}",
                f"{fmt_num(r['mean_test_ne_at_selected']):>8}",
                *mid,
                f"{fmt_num(r.get('mean_train_ne_at_selected')):>8}",
                f"{fmt_num(r.get('mean_test_calibration_at_selected'), '.3f'):>6}",
                f"{fmt_num(r.get('mean_test_auc_at_selected'), '.3f'):>6}",
            ]
            lines.append(" ".join(cells))
        pw = power_sentence(h.get("power"))
        if pw:
            lines.append("  " + pw)
        strata = [r for r in headline_rows(results) if r.get("strata_test_ne_at_selected")]
        if strata:
            lines.append(
                f"  Δ test NE by ad frequency at the selected pass: {'  '.join(f'{s:>9}' for s in STRATA)}"
            )
            for r in strata:
                cells = r["strata_test_ne_at_selected"]
                vals = []
                for s in STRATA:
                    c = cells.get(s)
                    vals.append(
                        "–"
                        if c is None
                        else (
                            fmt_num(c["delta"]["mean"], "+.4f") if c.get("delta") else fmt_num(c.get("mean"))
                        )
                    )
                lines.append(f"    {r['label'][:44]:<44} {'  '.join(f'{v:>9}' for v in vals)}")
        lines.append("")
    for pp in results.get("per_pass", []):
        lines.append(
            f"after {pp['pass']} pass(es), vs the baseline after {pp['pass']}"
            + (f"   oracle test NE {pp['oracle_test_ne']:.4f}" if pp.get("oracle_test_ne") else "")
        )
        lines.append(
            f"  {'arm':<36} {'test NE':>8} {'Δ vs base':>10} {'95% CI':>21} {'Holm p':>7} {'seeds':>6} "
            f"{'train NE':>8} {'calib':>6} {'AUC':>6}"
        )
        for r in pp["arms"]:
            d = r.get("delta_test_ne")
            ne = r.get("mean_test_ne")
            d_s = "baseline" if d is None else f"{d['mean']:+.4f}"
            n_s = "" if not d else f"{d['favouring']}/{d['n']}"
            lines.append(
                f"  {r['label'][:36]:<36} {fmt_num(ne):>8} {d_s:>10} {fmt_ci(d):>21} {fmt_p((d or {}).get('p_adj')):>7} "
                f"{n_s:>6} {fmt_num(r.get('mean_train_ne')):>8} {fmt_num(r.get('mean_test_calibration'), '.3f'):>6} "
                f"{fmt_num(r.get('mean_test_auc'), '.3f'):>6}"
            )
        lines.append("  " + pp["sentence"])
        lines.append("")
    ref = references_line(results)
    if ref:
        lines.append(ref)
    for n in results.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines).rstrip()


def search_text(results: dict[str, Any]) -> list[str]:
    """Each searched curve as text lines: strength, the round it entered, its search
    seeds and mean Δ validation NE (the chosen one marked)."""
    lines = []
    for s in results.get("search") or []:
        name = s["param"].split(".", 1)[-1]
        lines.append(f"  searched curve of {s['variant']} (Δ validation NE vs the baseline, search seeds):")
        lines.append(f"    {name:>12} {'round':>5} {'seeds':>5} {'Δ val':>8}")
        for p in s.get("points") or []:
            mark = "  <- chosen" if p["value"] == s.get("chosen") else ""
            lines.append(
                f"    {p['value']:>12.4g} {p.get('first_round') or '':>5} {p['seeds']:>5} "
                f"{fmt_num(p.get('val_delta_mean'), '+.4f'):>8}{mark}"
            )
    return lines


def _md_delta(d: dict[str, Any] | None, ne: float | None, with_p: bool = False) -> str:
    """One cell: mean Δ and its raw interval (bold when the Holm-adjusted p < 0.05)."""
    if d is None:
        return "–" if ne is None else f"{ne:.4f}"
    if d.get("ci_low") is None:
        return f"{d['mean']:+.4f}"
    cell = f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
    cell += f" p={fmt_p(d.get('p_adj'))}" if with_p else ""
    cell += f" {d['favouring']}/{d['n']}"
    return f"**{cell}**" if d.get("verdict") in ("beats", "worse") else cell


def to_markdown(results: dict[str, Any]) -> str:
    """The answer in Markdown (for docs and reports).

    First the headline sentence and table: every arm at its runs' validation-selected
    pass vs the baseline at its own, ranked on validation NE (rank, selected passes,
    Δ validation NE, Δ test NE with its raw 95% interval, Holm-adjusted p, sd of Δ,
    seeds favouring, train NE, calibration, AUC, Δ per frequency stratum; bold where the
    adjusted p < 0.05), the power line and the choice rule. Then the same-pass table (a
    column per pass count: Δ vs the baseline after as many passes, raw interval,
    Holm-adjusted p, seeds; bold where the adjusted p < 0.05), each arm's mean test NE
    by pass, one sentence per pass count and the notes."""
    per_pass = results.get("per_pass", [])
    if not per_pass:
        return "(no results)"
    h = results.get("headline") or {}
    lines: list[str] = []
    if h:
        lines += [f"**{h['sentence']}**", ""]
        for st in results.get("stage_sentences") or []:
            lines += [st, ""]
        for srch in results.get("search") or []:
            name = srch["param"].split(".", 1)[-1]
            lines += [
                f"Searched curve of {srch['variant']} (Δ validation NE vs the baseline on the search seeds; "
                "the headline row of this variant is its confirmation):",
                "",
                f"| {name} | first round | search seeds | mean Δ val NE |",
                "|---|---|---|---|",
            ]
            for p in srch.get("points") or []:
                v = (
                    f"**{p['value']:.4g}** (chosen)"
                    if p["value"] == srch.get("chosen")
                    else f"{p['value']:.4g}"
                )
                lines.append(
                    f"| {v} | {p.get('first_round')} | {p['seeds']} | {fmt_num(p.get('val_delta_mean'), '+.4f')} |"
                )
            lines.append("")
        tb = results.get("tuned_baseline")
        if tb:
            keys = list(tb["grid"])
            lines += [
                "| tuned baseline: " + " | ".join(keys) + " | mean val NE | seeds |",
                "|" + "---|" * (len(keys) + 2),
            ]
            for p in tb.get("points") or []:
                mark = " (chosen)" if p["values"] == tb.get("chosen") else ""
                lines.append(
                    "| "
                    + " | ".join(str(p["values"][k]) for k in keys)
                    + f" | {fmt_num(p.get('mean_val_ne'))}{mark} | {p['n']} |"
                )
            lines.append("")
        head = [
            "rank",
            "arm",
            "selects pass",
            "Δ val NE",
            "test NE",
            "Δ test NE [95% CI]",
            "Holm p",
            "sd Δ",
            "seeds favouring",
            *SELECTED_EXTRA_HEAD,
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in headline_rows(results):
            d = r.get("delta_test_ne_at_selected")
            dv = r.get("delta_val_ne_at_selected")
            is_base = r["arm"] == results.get("baseline")
            st = r.get("strata_test_ne_at_selected") or {}
            cells = [
                "" if r.get("rank") is None else str(r["rank"]),
                r["label"] + (" (best)" if r["arm"] == h.get("best") else ""),
                ",".join("–" if p is None else str(p) for p in r["selected_pass_per_seed"].values()),
                fmt_num(dv["mean"], "+.4f") if dv else "",
                fmt_num(r.get("mean_test_ne_at_selected")),
                f"baseline (seed sd {fmt_num(r.get('sd_test_ne_at_selected'))})"
                if is_base
                else "–"
                if not d
                else f"{d['mean']:+.4f} {fmt_ci(d)}"
                if d.get("ci_low") is not None
                else f"{d['mean']:+.4f} (one seed)",
                "" if is_base else fmt_p((d or {}).get("p_adj")),
                "" if is_base else fmt_num((d or {}).get("sd")),
                "" if is_base or not d else f"{d['favouring']}/{d['n']}",
                *selected_extra_cells(r, st),
            ]
            if d and d.get("verdict") in ("beats", "worse"):
                cells[5] = f"**{cells[5]}**"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        pw = power_sentence(h.get("power"))
        if pw:
            lines.append(pw)
        lines.append(
            f"Headline: {h['comparison']}. {CHOICE_NOTE} Bold: Holm-adjusted p < 0.05 over the "
            f"{h.get('family', 0)} arms; the interval beside it is the raw 95% t-interval."
        )
        lines.append("")
    head = ["arm"] + [
        f"{pp['pass']} pass{'es' if pp['pass'] > 1 else ''}: Δ test NE [95% CI] Holm p seeds"
        for pp in per_pass
    ]
    lines += [
        "Same pass: each arm after k passes vs the baseline after k passes.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for i, arm in enumerate(per_pass[0]["arms"]):
        cells = [arm["label"]]
        for pp in per_pass:
            row = pp["arms"][i]
            cells.append(_md_delta(row.get("delta_test_ne"), row.get("mean_test_ne"), with_p=True))
        lines.append("| " + " | ".join(cells) + " |")
    # the same arms' mean test NE (over seeds), to read whether NE rises across passes
    selected = {r["arm"]: r for r in results.get("selected", [])}
    with_sel = any(r.get("mean_test_ne_at_selected") is not None for r in selected.values())
    lines += [
        "",
        "| arm | "
        + " | ".join(f"test NE after {pp['pass']}" for pp in per_pass)
        + (" | at selected |" if with_sel else " |"),
    ]
    lines.append("|" + "---|" * (len(per_pass) + 1 + with_sel))
    for i, arm in enumerate(per_pass[0]["arms"]):
        nes = [pp["arms"][i].get("mean_test_ne") for pp in per_pass]
        if with_sel:
            nes.append(selected.get(arm["arm"], {}).get("mean_test_ne_at_selected"))
        lines.append(
            "| " + " | ".join([arm["label"], *("–" if v is None else f"{v:.4f}" for v in nes)]) + " |"
        )
    ref = references_line(results)
    if ref:
        lines += ["", ref]
    lines.append("")
    lines += [f"- {pp['sentence']}" for pp in per_pass]
    lines += [f"- note: {n}" for n in results.get("notes", []) if n != CHOICE_NOTE]
    return "\n".join(lines)
