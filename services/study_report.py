"""A study's answer as one self-contained HTML page (``report.html``).

``GET /v1/studies/{id}/report.html`` and ``rectrain study … --local`` (into its out
directory) write it; ``python -m services.study_stats STUDY.json --html OUT`` too. The
page needs nothing but itself: the dashboard's vendored uPlot (``api/static/vendor``,
MIT) and the study's numbers are inlined, no CDN and no request. It shows, in order:
the headline sentence and table (every arm at its validation-selected pass vs the
baseline at its own; Holm-adjusted p, power line, choice rule), test NE by pass per arm
with 95% interval bands and the reference lines (oracle; reference predictors when the
results carry them), the paired Δ by pass with bands, the strength curves (Δ test and Δ
validation NE at the selected pass vs the strength, the point validation chose), and
the same-pass table. Tables are plain HTML, so the numbers read without JavaScript.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from scipy import stats

from services.study_stats import (
    CHOICE_NOTE,
    SELECTED_EXTRA_HEAD,
    fmt_p,
    power_sentence,
    references_line,
    selected_extra_cells,
)
from services.study_stats.sentences import fmt_ci, fmt_num
from services.study_stats.tables import headline_rows

VENDOR = Path(__file__).resolve().parents[1] / "api" / "static" / "vendor"
MAX_ARMS_CHARTED = 10  # the baseline and the best strength of each variant (validation's choice)


def _vendor(name: str) -> str:
    text = (VENDOR / name).read_text(encoding="utf-8")
    if "</script" in text.lower() or "</style" in text.lower():  # would end the inline element
        raise ValueError(f"{name} contains a closing tag; it cannot be inlined")
    return text


def _mean_ci(mean: float | None, sd: float | None, n: int | None) -> tuple[float | None, float | None]:
    """95% t-interval of a mean over seeds (mean NE of one arm, unpaired)."""
    if mean is None or sd is None or not n or n < 2:
        return None, None
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def chart_data(results: dict[str, Any]) -> dict[str, Any]:
    """The charts' numbers: NE and Δ by pass for the baseline and, per variant, the
    strength validation chose (at most ``MAX_ARMS_CHARTED`` lines), the reference lines
    and the strength curves at the selected pass."""
    per_pass = results.get("per_pass") or []
    h = results.get("headline") or {}
    base = results.get("baseline")
    shown = [base, *(b["arm"] for b in h.get("best_per_variant", []))][:MAX_ARMS_CHARTED]
    labels = {r["arm"]: r["label"] for r in (per_pass[0]["arms"] if per_pass else [])}
    xs = [pp["pass"] for pp in per_pass]
    ne_series: list[dict[str, Any]] = []
    delta_series: list[dict[str, Any]] = []
    for arm in shown:
        rows: list[dict[str, Any]] = [next((r for r in pp["arms"] if r["arm"] == arm), {}) for pp in per_pass]
        cis = [_mean_ci(r.get("mean_test_ne"), r.get("sd_test_ne"), r.get("n_test_ne")) for r in rows]
        ne_series.append(
            {
                "color": len(ne_series),
                "arm": arm,
                "label": labels.get(arm, arm),
                "dash": arm == base,
                "mean": [r.get("mean_test_ne") for r in rows],
                "lo": [c[0] for c in cis],
                "hi": [c[1] for c in cis],
            }
        )
        if arm != base:
            ds = [r.get("delta_test_ne") or {} for r in rows]
            delta_series.append(
                {
                    "color": len(ne_series) - 1,  # the same colour as its NE line
                    "arm": arm,
                    "label": labels.get(arm, arm),
                    "mean": [d.get("mean") for d in ds],
                    "lo": [d.get("ci_low") for d in ds],
                    "hi": [d.get("ci_high") for d in ds],
                }
            )
    refs = []
    oracle = [pp["oracle_test_ne"] for pp in per_pass if pp.get("oracle_test_ne") is not None]
    if oracle:
        refs.append({"label": "oracle (true probabilities)", "y": min(oracle)})
    for name, splits in (results.get("references") or {}).items():
        if splits.get("test_ne") is not None:
            refs.append({"label": f"{name} predictor", "y": splits["test_ne"]})
    curves = []
    for c in results.get("curves") or []:
        pts = [p for p in c["points"] if isinstance(p.get("value"), (int, float)) and p["value"] > 0]
        if len(pts) < 2:
            continue
        at = [p.get("at_selected") or {} for p in pts]
        chosen = next((p for p in pts if p["arm"] == c.get("chosen")), None)
        curves.append(
            {
                "title": f"{c['variant']}: Δ NE at the selected pass vs log10({c['param']})"
                + (f" ({c['others']})" if c.get("others") else ""),
                "param": c["param"],
                "x": [math.log10(p["value"]) for p in pts],
                "chosen": None if chosen is None else chosen["value"],
                "series": [
                    {
                        "label": "Δ test NE (95% CI)",
                        "mean": [a.get("mean") for a in at],
                        "lo": [a.get("ci_low") for a in at],
                        "hi": [a.get("ci_high") for a in at],
                    },
                    {
                        "label": "Δ validation NE (what chooses)",
                        "dash": True,
                        "mean": [a.get("val_mean") for a in at],
                    },
                ],
            }
        )
    for srch in results.get("search") or []:  # a searched strength: validation Δ on the search seeds
        pts = [p for p in srch.get("points") or [] if p.get("val_delta_mean") is not None]
        if len(pts) < 2:
            continue
        log = srch.get("scale") == "log"
        conf = (srch.get("confirmed") or {}).get("delta_test_ne_at_selected") or {}
        title = f"{srch['variant']}: searched curve, Δ validation NE on the search seeds vs " + (
            f"log10({srch['param']})" if log else srch["param"]
        )
        if conf.get("mean") is not None:
            title += f" · confirmed on the study's seeds: Δ test NE {conf['mean']:+.4f}"
        curves.append(
            {
                "title": title,
                "param": srch["param"],
                "xlabel": f"log10({srch['param']})" if log else srch["param"],
                "x": [math.log10(p["value"]) if log else p["value"] for p in pts],
                "chosen": srch.get("chosen"),
                "searched": True,
                "series": [
                    {
                        "label": "mean Δ validation NE over its search seeds (what chooses)",
                        "mean": [p["val_delta_mean"] for p in pts],
                    }
                ],
            }
        )
    return {
        "passes": xs,
        "ne": {"series": ne_series, "refs": refs},
        "delta": {"series": delta_series, "refs": [{"label": "0 = the baseline", "y": 0.0}]},
        "curves": curves,
    }


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _headline_table(results: dict[str, Any]) -> str:
    h = results.get("headline") or {}
    head = [
        "#",
        "arm",
        "selected pass (per seed)",
        "Δ val NE",
        "test NE",
        "Δ test NE",
        "95% CI (raw)",
        "Holm p",
        "sd Δ",
        "seeds favouring",
        *SELECTED_EXTRA_HEAD,
    ]
    out = [
        "<table id='headline-table'><thead><tr>",
        *(f"<th>{_e(x)}</th>" for x in head),
        "</tr></thead><tbody>",
    ]
    for r in headline_rows(results):
        d = r.get("delta_test_ne_at_selected") or {}
        dv = r.get("delta_val_ne_at_selected") or {}
        is_base = r["arm"] == results.get("baseline")
        verdict = d.get("verdict") or ""
        st = r.get("strata_test_ne_at_selected") or {}
        cells = [
            "" if r.get("rank") is None else str(r["rank"]),
            r["label"] + (" ★" if r["arm"] == h.get("best") else ""),
            ", ".join("–" if p is None else str(p) for p in r["selected_pass_per_seed"].values()),
            fmt_num(dv.get("mean"), "+.4f") if dv else "",
            fmt_num(r.get("mean_test_ne_at_selected")),
            "baseline" if is_base else fmt_num(d.get("mean"), "+.4f"),
            f"seed sd {fmt_num(r.get('sd_test_ne_at_selected'))}" if is_base else fmt_ci(d),
            "" if is_base else fmt_p(d.get("p_adj")),
            "" if is_base else fmt_num(d.get("sd")),
            "" if is_base or not d else f"{d['favouring']}/{d['n']}",
            *selected_extra_cells(r, st),
        ]
        out.append(f"<tr data-arm='{_e(r['arm'])}' class='{_e(verdict.replace(' ', '-'))}'>")
        out += [f"<td>{_e(c)}</td>" for c in cells]
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _same_pass_table(results: dict[str, Any]) -> str:
    per_pass = results.get("per_pass") or []
    if not per_pass:
        return ""
    out = ["<table id='same-pass-table'><thead><tr><th>arm</th>"]
    out += [f"<th>after {pp['pass']}: Δ test NE [95% CI] Holm p</th>" for pp in per_pass]
    out.append("</tr></thead><tbody>")
    for i, arm in enumerate(per_pass[0]["arms"]):
        out.append(f"<tr data-arm='{_e(arm['arm'])}'><td>{_e(arm['label'])}</td>")
        for pp in per_pass:
            r = pp["arms"][i]
            d = r.get("delta_test_ne")
            if d is None:
                out.append(f"<td>{_e(fmt_num(r.get('mean_test_ne')))}</td>")
                continue
            cls = (d.get("verdict") or "").replace(" ", "-")
            text = f"{d['mean']:+.4f} {fmt_ci(d)} {fmt_p(d.get('p_adj'))}"
            out.append(f"<td class='{_e(cls)}'>{_e(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1d232b; margin: 24px auto; max-width: 1400px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.headline { font-size: 17px; font-weight: 600; background: #eef4fb; border-left: 4px solid #4e79a7; padding: 10px 14px; }
.muted { color: #5b6470; } table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 6px 0; }
th, td { border-bottom: 1px solid #e3e6ea; padding: 3px 7px; font-size: 13px; text-align: right; white-space: nowrap; }
th:nth-child(2), td:nth-child(2), #same-pass-table td:first-child, #same-pass-table th:first-child { text-align: left; }
th { font-weight: 600; background: #f6f7f9; white-space: normal; vertical-align: bottom; } .beats { color: #1e7b34; font-weight: 600; } .worse { color: #b3261e; }
tr.beats td, tr.worse td { font-weight: 600; } .wrap { overflow-x: auto; }
.chart { margin: 10px 0 18px; } .legend span { display: inline-block; margin: 0 14px 4px 0; }
.legend i { display: inline-block; width: 14px; height: 3px; vertical-align: middle; margin-right: 5px; }
"""

JS = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const PAL = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#bab0ac"];
  const rgba = (hex, a) => `rgba(${parseInt(hex.slice(1, 3), 16)},${parseInt(hex.slice(3, 5), 16)},${parseInt(hex.slice(5, 7), 16)},${a})`;
  function chart(parent, id, title, xLabel, yLabel, x, series, refs, isPass) {
    const box = document.createElement("div");
    box.className = "chart"; box.id = id;
    const leg = document.createElement("div"); leg.className = "legend";
    parent.appendChild(box);
    const data = [x], ser = [{ label: xLabel }], bands = [];
    let points = 0;
    series.forEach((s, i) => {
      const c = PAL[(s.color != null ? s.color : i) % PAL.length];
      data.push(s.mean); points += s.mean.filter((v) => v != null).length;
      ser.push({ label: s.label, stroke: c, width: 2, dash: s.dash ? [6, 4] : undefined, points: { show: true, size: 6 } });
      leg.insertAdjacentHTML("beforeend", `<span><i style="background:${c}"></i></span>`);
      leg.lastChild.appendChild(document.createTextNode(s.label));
      if (s.lo && s.lo.some((v) => v != null)) {
        data.push(s.hi); ser.push({ label: "", stroke: "transparent", width: 0, points: { show: false } });
        data.push(s.lo); ser.push({ label: "", stroke: "transparent", width: 0, points: { show: false } });
        bands.push({ series: [data.length - 2, data.length - 1], fill: rgba(c, 0.16) });
      }
    });
    (refs || []).forEach((r) => {
      data.push(x.map(() => r.y));
      ser.push({ label: r.label, stroke: "#6b7280", width: 1, dash: [3, 4], points: { show: false } });
      leg.insertAdjacentHTML("beforeend", `<span><i style="background:#6b7280"></i></span>`);
      leg.lastChild.appendChild(document.createTextNode(`${r.label} ${r.y.toFixed(4)}`));
    });
    box.dataset.points = String(points);
    const fmt = (u, vals) => vals.map((v) => (v == null ? "" : v.toFixed(4)));
    const xs = isPass ? (u, vals) => vals.map((v) => (Number.isInteger(v) ? String(v) : "")) : undefined;
    new uPlot({
      title, width: Math.min(1200, document.body.clientWidth - 40), height: 300,
      scales: { x: { time: false } },
      axes: [{ label: xLabel, values: xs, incrs: isPass ? [1, 2, 5, 10] : undefined }, { label: yLabel, size: 70, values: fmt }],
      series: ser, bands, legend: { show: false },
    }, data, box);
    box.appendChild(leg);
  }
  const charts = document.getElementById("charts");
  if (D.passes.length) {
    chart(charts, "chart-ne", "Test NE by pass: the baseline (dashed) and the strength validation chose per regularizer (bands: 95% CI over seeds)",
      "pass", "test NE", D.passes, D.ne.series, D.ne.refs, true);
    if (D.delta.series.length) chart(charts, "chart-delta", "Δ test NE vs the baseline after as many passes (paired by seed, 95% CI bands)",
      "pass", "Δ test NE", D.passes, D.delta.series, D.delta.refs, true);
  }
  const curves = document.getElementById("curves");
  D.curves.forEach((c, i) => chart(curves, `curve-${i}`, c.title + (c.chosen != null ? ` · validation chose ${c.chosen}` : ""),
    c.xlabel || `log10(${c.param})`, "Δ NE vs the baseline stopped early", c.x, c.series, [{ label: "0 = the baseline", y: 0 }], false));
  document.body.dataset.ready = "1";
})();
"""


def _stages_html(res: dict[str, Any]) -> str:
    """A staged study: the tuned baseline (over what, what was chosen) and each searched
    strength (its curve's points, the choice, the confirmation on the study's seeds)."""
    parts = []
    tb = res.get("tuned_baseline")
    if tb:
        keys = list(tb["grid"])
        rows = "".join(
            "<tr>"
            + "".join(f"<td>{_e(p['values'][k])}</td>" for k in keys)
            + f"<td>{fmt_num(p.get('mean_val_ne'))}</td><td>{_e(p['n'])}</td>"
            + f"<td>{'chosen' if p['values'] == tb.get('chosen') else ''}</td></tr>"
            for p in tb.get("points") or []
        )
        head = "".join(f"<th>{_e(k)}</th>" for k in keys)
        parts.append(
            "<h2>Tuned baseline</h2>"
            f"<p id='tuned-baseline'>{_e(next((x for x in res.get('stage_sentences') or [] if x.startswith('The baseline')), ''))}</p>"
            f"<div class='wrap'><table id='tuned-table'><thead><tr>{head}<th>mean val NE</th><th>seeds</th><th></th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>"
        )
    for i, srch in enumerate(res.get("search") or []):
        name = srch["param"].split(".", 1)[-1]
        rows = "".join(
            f"<tr><td>{p['value']:.4g}</td><td>{_e(p.get('first_round'))}</td><td>{_e(p['seeds'])}</td>"
            f"<td>{fmt_num(p.get('val_delta_mean'), '+.4f')}</td>"
            f"<td>{'chosen' if p['value'] == srch.get('chosen') else ''}</td></tr>"
            for p in srch.get("points") or []
        )
        parts.append(
            f"<h2>Strength search: {_e(srch['variant'])}</h2><p id='search-{i}'>{_e(srch.get('sentence', ''))}</p>"
            f"<div class='wrap'><table id='search-table-{i}'><thead><tr><th>{_e(name)}</th><th>first round</th>"
            "<th>search seeds</th><th>mean Δ val NE</th><th></th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>"
        )
    return "\n".join(parts)


def render_report(doc: dict[str, Any]) -> str:
    """The page for a study document (``GET /v1/studies/{id}`` or ``--local``'s
    study.json: at least ``results``; ``name``/``id``/``plan`` when present)."""
    res = doc.get("results") or {}
    h = res.get("headline") or {}
    name = doc.get("name") or doc.get("id") or "study"
    plan = doc.get("plan") or {}
    meta = []
    if plan.get("arms"):
        meta.append(
            f"{plan['arms']} arms × {len(plan.get('seeds') or [])} seeds × {plan.get('passes')} passes"
        )
    meta.append(f"seeds {res.get('seeds')}")
    data = json.dumps(chart_data(res), allow_nan=False, default=str).replace("</", "<\\/")
    pw = power_sentence(h.get("power"))
    ref = references_line(res)
    sentences = "".join(f"<li>{_e(pp['sentence'])}</li>" for pp in res.get("per_pass") or [])
    notes = "".join(f"<li>{_e(n)}</li>" for n in res.get("notes") or [] if n != CHOICE_NOTE)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(name)}: study report</title>
<style>{_vendor("uPlot.min.css")}</style>
<style>{CSS}</style>
</head><body>
<h1>{_e(name)}</h1>
<p class="muted">{_e(" · ".join(meta))}</p>
<p class="headline" id="headline">{_e(h.get("sentence") or "No results yet.")}</p>
{"".join(f'<p class="stage-sentence">{_e(x)}</p>' for x in res.get("stage_sentences") or [])}
<p class="muted" id="choice-rule">{_e(CHOICE_NOTE)} Headline: {_e(h.get("comparison", ""))}. An arm "beats" or is
"worse" only when its Holm-adjusted p (over the {_e(h.get("family", 0))} arms) is below 0.05; the interval beside
it is the raw 95% t-interval. ★: the best on validation.</p>
<div class="wrap">{_headline_table(res)}</div>
{f'<p id="power">{_e(pw)}</p>' if pw else ""}
{f'<p id="references">{_e(ref)}</p>' if ref else ""}
{_stages_html(res)}
<h2>NE by pass</h2>
<div id="charts"></div>
<h2>Strength curves</h2>
<div id="curves">{"" if res.get("curves") or res.get("search") else "<p class='muted'>No numeric grid in this study.</p>"}</div>
<h2>Same pass: each arm after k passes vs the baseline after k passes</h2>
<div class="wrap">{_same_pass_table(res)}</div>
<ul id="sentences">{sentences}</ul>
<ul class="muted" id="notes">{notes}</ul>
<script>{_vendor("uPlot.iife.min.js")}</script>
<script type="application/json" id="report-data">{data}</script>
<script>{JS}</script>
</body></html>
"""
