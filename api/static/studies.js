/* rectrain dashboard: studies (list, new, one study live). Registers its pages with app.js
 * (window.RectrainPages) and uses the helpers app.js hands to render().
 *
 * The study page follows GET /v1/studies/{id}/events (SSE): each `study` event carries the
 * whole study (progress, runs, answer), so the page simply re-renders; `end` closes it.
 */
(function () {
  "use strict";

  const pages = (window.RectrainPages = window.RectrainPages || []);
  const STUDY_TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

  const fmtCI = (ui, d) => (d && ui.isNum(d.ci_low) ? `[${ui.fmtDelta(d.ci_low)}, ${ui.fmtDelta(d.ci_high)}]` : "–");
  // green / red only when the Holm-adjusted p < 0.05 (the verdict), not when the raw interval excludes 0
  const cls = (d) => (!d || !d.verdict ? "num" : d.verdict === "beats" ? "num better" : d.verdict === "worse" ? "num worse" : "num");
  const fmtP = (p) => (p == null ? "–" : p < 0.001 ? "<0.001" : p < 0.1 ? p.toFixed(3) : p.toFixed(2));
  const CHOICE_NOTE = "Every choice (each run's pass, the best strength per regularizer, the best arm, the ranking) is made on validation NE; test NE is reported for what was chosen.";

  function etaText(s) {
    if (s == null) return "";
    return s < 90 ? ` · about ${Math.round(s)} s left` : ` · about ${Math.round(s / 60)} min left`;
  }

  function progressText(p, eta) {
    return `${p.finished} / ${p.total} runs finished · ${p.running + p.starting} running · ${p.queued + p.unsubmitted} waiting` +
      (p.failed ? ` · ${p.failed} failed` : "") + (p.cancelled ? ` · ${p.cancelled} cancelled` : "") +
      ` · passes ${p.passes_done} / ${p.passes_total}` + etaText(eta);
  }

  // ------------------------------------------------------------------ list

  async function pageStudies(_arg, ui) {
    const { h, api, ROOT, enc } = ui;
    const tbody = h("tbody");
    const errEl = h("p", { class: "error", role: "alert" });
    ui.main.replaceChildren(
      h("div", { class: "page-head" }, h("h1", {}, "Studies"), h("span", { class: "spacer" }),
        h("a", { class: "button", href: `${ROOT}/ui/studies/new`, id: "new-study" }, "New study")),
      h("div", { class: "panel" }, errEl, h("div", { class: "table-wrap" }, h("table", { id: "studies-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Status"), h("th", { class: "num" }, "Runs"),
          h("th", { class: "num" }, "Arms × seeds × passes"), h("th", {}, "Created"))), tbody))));
    async function refresh() {
      try {
        const r = await api("/v1/studies?limit=100");
        tbody.replaceChildren(...r.data.map((s) => h("tr", { dataset: { studyId: s.id, status: s.status } },
          h("td", {}, h("a", { href: `${ROOT}/ui/studies/${enc(s.id)}` }, s.name || s.id)),
          h("td", {}, ui.statusBadge(s.status)),
          h("td", { class: "num" }, `${s.progress.finished} / ${s.progress.total}`),
          h("td", { class: "num" }, `${s.plan.arms} × ${s.plan.seeds.length} × ${s.plan.passes}`),
          h("td", {}, ui.fmtTime(s.created_at)))));
        if (!r.data.length) tbody.appendChild(h("tr", {}, h("td", { colspan: "5", class: "muted" }, "No studies yet.")));
        errEl.textContent = "";
      } catch (ex) { errEl.textContent = `Could not load studies: ${ex.message}`; }
    }
    await refresh();
    ui.every(3000, () => { if (!document.hidden) refresh(); });
  }

  // ------------------------------------------------------------------ new

  async function pageNewStudy(_arg, ui) {
    const { h, api, ROOT, enc, ApiError } = ui;
    const specIn = h("textarea", { id: "study-spec", class: "code", spellcheck: "false" });
    const planBtn = h("button", { type: "button", class: "ghost", id: "plan-study" }, "Plan (size and cost)");
    const submitBtn = h("button", { type: "submit", id: "submit-study" }, "Run study");
    const planEl = h("div", { id: "study-plan" });
    const errEl = h("div", { class: "field-error", id: "err-study", role: "alert" });
    const form = h("form", { id: "study-form", novalidate: true },
      h("label", { for: "study-spec" }, "Study spec (YAML or JSON; the base job spec inline)"), specIn, errEl,
      h("div", { class: "row", style: "margin-top:10px" }, planBtn, submitBtn,
        h("span", { class: "muted" }, "The baseline is added automatically; every run is an ordinary job.")), planEl);
    ui.main.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, "New study")), h("div", { class: "panel" }, form));
    try { const r = await fetch(`${ROOT}/ui/example-study`); specIn.value = r.ok ? await r.text() : ""; } catch (e) { /* empty form */ }

    function parse() {
      errEl.replaceChildren();
      try {
        const v = jsyaml.load(specIn.value);
        if (v == null || typeof v !== "object" || Array.isArray(v)) throw new Error("the study must be a mapping");
        return v;
      } catch (ex) { errEl.textContent = `cannot parse: ${ex.message}`; return null; }
    }
    function showErrors(ex) {
      const d = ex instanceof ApiError && ex.body && ex.body.detail;
      if (!Array.isArray(d)) { errEl.textContent = ex.message; return; }
      errEl.replaceChildren(h("ul", { class: "errors" }, d.map((e) => {
        const path = (e.loc || []).slice(2);
        const line = path.length ? ui.lineOfPath(specIn.value, path) : null;
        return h("li", {}, e.msg, line ? h("a", { href: "#", class: "muted", onclick: (ev) => { ev.preventDefault(); ui.selectLine(specIn, line); } }, ` (line ${line})`) : null);
      })));
    }
    planBtn.addEventListener("click", async () => {
      const spec = parse();
      if (!spec) return;
      try {
        const p = await api("/v1/studies/plan", { method: "POST", json: { spec } });
        const est = p.estimate;
        planEl.replaceChildren(h("div", { class: "panel", style: "margin-top:12px" },
          h("p", { id: "plan-summary" }, (p.stages
            ? `${p.arms} fixed arms (baseline + ${p.arms - 1}) × ${p.seeds.length} seeds, searched and tuned in stages: up to ${p.runs} runs of ${p.passes} passes`
            : `${p.arms} arms (baseline + ${p.arms - 1}) × ${p.seeds.length} seeds = ${p.runs} runs of ${p.passes} passes`) +
            (est.sequential_seconds != null ? ` · roughly ${Math.round(est.sequential_seconds / 60)} min one run after another` : "")),
          h("ul", {}, p.arm_list.map((a) => h("li", {}, a.label)))));
      } catch (ex) { showErrors(ex); }
    });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const spec = parse();
      if (!spec) return;
      submitBtn.disabled = true;
      try {
        const s = await api("/v1/studies", { method: "POST", json: { spec } });
        location.href = `${ROOT}/ui/studies/${enc(s.id)}`;
      } catch (ex) { showErrors(ex); submitBtn.disabled = false; }
    });
  }

  // ------------------------------------------------------------------ one study

  async function pageStudy(studyId, ui) {
    const { h, api, ROOT, enc, isNum, fmtNE, fmtDelta, Chart, PALETTE } = ui;
    let study;
    try { study = await api(`/v1/studies/${enc(studyId)}`); }
    catch (ex) {
      ui.main.replaceChildren(h("div", { class: "panel" }, h("h1", {}, "Study not found"),
        h("p", { class: "error" }, `${studyId}: ${ex.message}`), h("a", { href: `${ROOT}/ui/studies` }, "← all studies")));
      return;
    }
    const state = { pass: null };
    const title = h("h1", { id: "study-title" });
    const badge = h("span", { id: "study-status" });
    const conn = h("span", { class: "conn closed", id: "conn-state" });
    const meta = h("div", { class: "meta", id: "study-meta" });
    const progress = h("div", { id: "study-progress", class: "muted" });
    const bar = h("progress", { id: "study-progress-bar", max: "1", value: "0", style: "width:100%" });
    const actions = h("div", { class: "row" });
    const actErr = h("p", { class: "error", role: "alert" });
    const answer = h("div", { class: "panel", id: "study-answer" });
    const passTabs = h("div", { class: "row", id: "pass-tabs" });
    const tableWrap = h("div", { class: "table-wrap", id: "study-table-wrap" });
    const charts = h("div", { class: "charts" });
    const neChart = new Chart(charts, {
      id: "chart-study-ne", title: "Mean test NE by pass (dashed: oracle floor)", xLabel: "pass", yLabel: "test NE", xKind: "pass",
      series: [], emptyText: "appears when runs finish passes",
    });
    const deltaChart = new Chart(charts, {
      id: "chart-study-delta", title: "Δ test NE vs baseline by pass (paired, mean over seeds)", xLabel: "pass", yLabel: "Δ NE",
      xKind: "pass", series: [], refLines: [{ y: 0, label: "0 = baseline" }], minSpan: 0.004, emptyText: "appears when runs finish passes",
    });
    const curvesEl = h("div", { class: "charts", id: "study-curves" });
    const curveCharts = new Map();
    const runsWrap = h("div", { class: "table-wrap", id: "study-runs" });
    const notesEl = h("ul", { class: "muted", id: "study-notes" });
    ui.main.replaceChildren(
      h("div", { class: "page-head" },
        h("div", { style: "flex:1" }, h("div", { class: "row" }, title, badge, conn), meta, progress, bar),
        actions),
      actErr, answer,
      h("div", { class: "panel" }, h("div", { class: "row" }, h("h2", { style: "margin:0" }, "Same pass: vs the baseline after as many passes"), passTabs), tableWrap),
      charts, curvesEl,
      h("div", { class: "panel" }, h("h2", {}, "Runs (each an ordinary job)"), runsWrap),
      h("div", { class: "panel" }, h("h2", {}, "Notes"), notesEl));

    let deleteArmed = 0;
    function renderHeader() {
      title.textContent = study.name || study.id;
      badge.replaceChildren(ui.statusBadge(study.status));
      const p = study.progress;
      progress.textContent = progressText(p, study.eta_seconds) + (study.waiting ? ` · ${study.waiting}` : "");
      if (study.error) actErr.textContent = `stopped: ${study.error}`;
      bar.max = String(p.total || 1);
      bar.value = String(p.finished);
      meta.textContent = `id ${study.id} · ${study.plan.arms} arms × seeds ${JSON.stringify(study.plan.seeds)} × ${study.plan.passes} passes · created ${ui.fmtTime(study.created_at)}`;
      const btns = [
        h("a", { class: "button", href: `${ROOT}/v1/studies/${enc(study.id)}/export.csv`, id: "export-csv", onclick: download("csv") }, "CSV"),
        h("a", { class: "button", href: `${ROOT}/v1/studies/${enc(study.id)}/export.json`, id: "export-json", onclick: download("json") }, "JSON"),
        h("a", { class: "button", href: `${ROOT}/v1/studies/${enc(study.id)}/report.html`, id: "export-report", onclick: download("html", "report.html") }, "Report"),
      ];
      if (!STUDY_TERMINAL.has(study.status) && !study.cancel_requested) {
        btns.unshift(h("button", { type: "button", class: "danger", id: "cancel-study", onclick: async (e) => {
          e.target.disabled = true;
          try { study = await api(`/v1/studies/${enc(study.id)}/cancel`, { method: "POST" }); renderHeader(); }
          catch (ex) { actErr.textContent = `cancel: ${ex.message}`; }
        } }, "Cancel study"));
      }
      if (STUDY_TERMINAL.has(study.status)) {
        btns.push(h("button", { type: "button", class: "danger", id: "delete-study", onclick: async (e) => {
          if (Date.now() - deleteArmed > 4000) { deleteArmed = Date.now(); e.target.textContent = "Confirm delete (and its jobs)"; return; }
          try { await api(`/v1/studies/${enc(study.id)}`, { method: "DELETE" }); location.href = `${ROOT}/ui/studies`; }
          catch (ex) { actErr.textContent = `delete: ${ex.message}`; }
        } }, "Delete"));
      }
      actions.replaceChildren(...btns);
    }

    function download(kind, path) {  // exports need the token: fetch, then save as a file
      return async (e) => {
        e.preventDefault();
        const r = await fetch(`${ROOT}/v1/studies/${enc(study.id)}/${path || `export.${kind}`}`, { headers: { Authorization: `Bearer ${ui.getToken()}` } });
        const blob = await r.blob();
        const a = h("a", { href: URL.createObjectURL(blob), download: `study-${study.id}.${kind}` });
        document.body.appendChild(a); a.click(); a.remove();
      };
    }

    // the headline: every arm at its validation-selected pass vs the baseline at its own,
    // ranked on validation NE; Holm-adjusted p; power; then the same-pass sentences
    function renderAnswer(res) {
      const hl = res.headline || {};
      const strata = ["frequent", "medium", "rare"];
      const byArm = new Map(res.selected.map((r) => [r.arm, r]));
      const order = [res.baseline, ...(hl.ranking || [])].concat(res.selected.map((r) => r.arm).filter((a) => a !== res.baseline && !(hl.ranking || []).includes(a)));
      const rows = order.map((a) => byArm.get(a)).filter(Boolean).map((r) => {
        const d = r.delta_test_ne_at_selected, dv = r.delta_val_ne_at_selected;
        const base = r.arm === res.baseline;
        const st = r.strata_test_ne_at_selected || {};
        return h("tr", { dataset: { arm: r.arm, verdict: (d && d.verdict) || "" } },
          h("td", { class: "num" }, r.rank == null ? "" : String(r.rank)),
          h("td", {}, r.label + (r.arm === hl.best ? " ★" : "")),
          h("td", {}, Object.entries(r.selected_pass_per_seed).map(([s, p]) => `seed ${s}: ${p == null ? "–" : p}`).join(", ")),
          h("td", { class: "num" }, dv ? fmtDelta(dv.mean) : ""),
          h("td", { class: "num" }, fmtNE(r.mean_test_ne_at_selected)),
          h("td", { class: cls(d) }, base ? "baseline" : d ? fmtDelta(d.mean) : "–"),
          h("td", { class: cls(d) }, base ? `seed sd ${fmtNE(r.sd_test_ne_at_selected)}` : d ? (d.ci_low == null ? "one seed: no interval" : fmtCI(ui, d)) : ""),
          h("td", { class: cls(d) }, base || !d ? "" : fmtP(d.p_adj)),
          h("td", { class: "num" }, base || !d ? "" : fmtNE(d.sd)),
          h("td", { class: "num" }, base || !d ? "" : `${d.favouring} / ${d.n}`),
          h("td", { class: "num" }, fmtNE(r.mean_train_ne_at_selected)),
          h("td", { class: "num" }, isNum(r.mean_test_calibration_at_selected) ? r.mean_test_calibration_at_selected.toFixed(3) : "–"),
          h("td", { class: "num" }, isNum(r.mean_test_auc_at_selected) ? r.mean_test_auc_at_selected.toFixed(3) : "–"),
          strata.map((s) => { const c = st[s]; const sd = c && c.delta;
            return h("td", { class: cls(sd), title: sd ? fmtCI(ui, sd) : "" }, c ? (sd ? fmtDelta(sd.mean) : fmtNE(c.mean)) : "–"); }));
      });
      const pw = hl.power;
      const refs = Object.entries(res.references || {}).filter(([, v]) => isNum(v.test_ne)).map(([k, v]) => `${k} ${fmtNE(v.test_ne)}`);
      answer.replaceChildren(...[h("h2", {}, "The answer: what you would ship"),
        h("p", { id: "study-headline", class: "headline" }, hl.sentence || "No results yet."),
        h("p", { class: "muted", id: "choice-rule" }, `${CHOICE_NOTE} Each arm at its runs' validation-selected pass vs the baseline at its runs' own (paired by seed); ` +
          `"beats"/"worse" (green/red) only when the Holm-adjusted p over the ${hl.family || 0} arms is below 0.05; the interval is the raw 95% t-interval. ★ the best on validation.`),
        h("div", { class: "table-wrap" }, h("table", { id: "headline-table" },
          h("thead", {}, h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "Arm"), h("th", {}, "Selected pass"), h("th", { class: "num" }, "Δ val NE"),
            h("th", { class: "num" }, "Test NE"), h("th", { class: "num" }, "Δ test NE"), h("th", { class: "num" }, "95% CI"), h("th", { class: "num" }, "Holm p"),
            h("th", { class: "num" }, "sd Δ"), h("th", { class: "num" }, "Seeds favouring"), h("th", { class: "num" }, "Train NE"),
            h("th", { class: "num" }, "Calibration"), h("th", { class: "num" }, "AUC"),
            strata.map((s) => h("th", { class: "num", title: "Δ test NE in this stratum at the selected pass (baseline row: its NE)" }, `Δ ${s}`)))),
          h("tbody", {}, rows))),
        pw ? h("p", { id: "study-power", class: "muted" }, `Power: with ${pw.seeds} seeds and Holm over ${pw.arms} arms (the best arm needs p < ${pw.alpha.toPrecision(2)}), ` +
          `a Δ test NE of ${fmtNE(pw.detectable_delta)} or more is found ${Math.round(pw.power * 100)}% of the time (median sd of Δ ${fmtNE(pw.sd_delta)}` +
          (isNum(pw.baseline_sd) ? `; the baseline's seed sd ${fmtNE(pw.baseline_sd)}` : "") + ")" +
          (pw.target ? `; ${pw.target.label}'s Δ of ${fmtNE(pw.target.delta)} needs ${pw.target.seeds_needed == null ? "more than 100,000" : pw.target.seeds_needed} seeds.` : ".")) : null,
        refs.length ? h("p", { id: "study-references", class: "muted" }, `Reference test NE: ${refs.join("; ")}`) : null,
        h("h3", {}, "Same pass"),
        h("ul", { id: "study-sentences" }, res.per_pass.map((pp) => h("li", { dataset: { pass: String(pp.pass) } }, pp.sentence)))].filter(Boolean));
    }

    function renderTable(res) {
      const k = state.pass || res.passes;
      passTabs.replaceChildren(...res.per_pass.map((pp) => h("button", {
        type: "button", class: pp.pass === k ? "small" : "ghost small", dataset: { pass: String(pp.pass) },
        onclick: () => { state.pass = pp.pass; renderTable(res); },
      }, `${pp.pass} pass${pp.pass > 1 ? "es" : ""}`)));
      const pp = res.per_pass[k - 1];
      const strata = ["frequent", "medium", "rare"];
      const rows = pp.arms.map((r) => {
        const d = r.delta_test_ne;
        const st = (r.strata && r.strata.test_ne) || {};
        return h("tr", { dataset: { arm: r.arm } },
          h("td", {}, r.label),
          h("td", { class: "num" }, fmtNE(r.mean_test_ne)),
          h("td", { class: cls(d) }, d ? fmtDelta(d.mean) : "baseline"),
          h("td", { class: cls(d) }, d ? (d.ci_low == null ? "one seed: no interval" : fmtCI(ui, d)) : ""),
          h("td", { class: cls(d) }, d ? fmtP(d.p_adj) : ""),
          h("td", { class: "num" }, d ? `${d.favouring} / ${d.n}` : `${r.n_test_ne}`),
          h("td", { class: "num" }, fmtNE(r.mean_val_ne)),
          h("td", { class: "num" }, fmtNE(r.mean_train_ne)),
          h("td", { class: "num" }, isNum(r.mean_test_calibration) ? r.mean_test_calibration.toFixed(3) : "–"),
          h("td", { class: "num" }, isNum(r.mean_test_auc) ? r.mean_test_auc.toFixed(3) : "–"),
          strata.map((s) => {
            const c = st[s];
            const sd = c && c.delta;
            return h("td", { class: cls(sd), title: sd ? fmtCI(ui, sd) : "" }, c ? (sd ? fmtDelta(sd.mean) : fmtNE(c.mean)) : "–");
          }));
      });
      tableWrap.replaceChildren(h("table", { id: "study-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Arm"), h("th", { class: "num" }, "Mean test NE"), h("th", { class: "num" }, "Δ vs baseline"),
          h("th", { class: "num" }, "95% CI"), h("th", { class: "num" }, "Holm p"), h("th", { class: "num" }, "Seeds favouring"), h("th", { class: "num" }, "Mean val NE"),
          h("th", { class: "num" }, "Train NE"), h("th", { class: "num" }, "Calibration"), h("th", { class: "num" }, "AUC"),
          strata.map((s) => h("th", { class: "num", title: "Δ test NE in this stratum (baseline row: its NE)" }, `Δ ${s}`)))),
        h("tbody", {}, rows)),
        ...(isNum(pp.oracle_test_ne) ? [h("p", { class: "muted" }, `oracle test NE (the floor, synthetic data): ${fmtNE(pp.oracle_test_ne)}`)] : []));
    }

    function renderCharts(res) {
      const xs = res.per_pass.map((pp) => pp.pass);
      const arms = res.per_pass.length ? res.per_pass[0].arms : [];
      const series = arms.map((a, i) => ({ label: a.label, color: PALETTE[i % PALETTE.length], dash: i === 0 ? [6, 4] : undefined }));
      const oracle = res.per_pass.map((pp) => pp.oracle_test_ne).filter(isNum);
      const refLines = Object.entries(res.references || {}).filter(([, v]) => isNum(v.test_ne)).map(([k, v]) => ({ y: v.test_ne, label: `${k} predictor` }));
      neChart.opts.refLines = (oracle.length ? [{ y: Math.min(...oracle), label: "oracle floor" }] : []).concat(refLines);
      neChart.opts.includeY = oracle.length ? Math.min(...oracle) : undefined;
      const sig = JSON.stringify([series, neChart.opts.includeY]);
      if (neChart.sig !== sig) { neChart.setSeries(series); deltaChart.setSeries(series.slice(1)); neChart.sig = sig; }
      neChart.setData([xs, ...arms.map((a) => res.per_pass.map((pp) => { const r = pp.arms.find((x) => x.arm === a.arm); return r && isNum(r.mean_test_ne) ? r.mean_test_ne : null; }))]);
      deltaChart.setData([xs, ...arms.slice(1).map((a) => res.per_pass.map((pp) => { const r = pp.arms.find((x) => x.arm === a.arm); return r && r.delta_test_ne ? r.delta_test_ne.mean : null; }))]);
      // strength curves: Δ test NE vs log10(parameter), one series per pass count
      for (const c of res.curves) {
        const id = `curve-${c.variant}-${c.param}-${c.others}`.replace(/[^A-Za-z0-9_-]/g, "_");
        let ch = curveCharts.get(id);
        if (!ch) {
          ch = new Chart(curvesEl, {
            id, title: `Strength curve: Δ NE vs log10(${c.param})${c.others ? ` (${c.others})` : ""}`,
            xLabel: `log10(${c.param})`, yLabel: "Δ NE", minSpan: 0.004, refLines: [{ y: 0, label: "0 = baseline" }],
            series: xs.map((k, i) => ({ label: `test, ${k} pass${k > 1 ? "es" : ""}`, color: PALETTE[i % PALETTE.length], points: true })).concat(
              [{ label: "test, at the selected pass (vs the baseline stopped early)", color: "#222", width: 3, points: true },
               { label: "validation, at the selected pass (what chooses)", color: "#222", dash: [6, 4], points: true }]),
          });
          ch.box.classList.add("strength-curve");
          curveCharts.set(id, ch);
        }
        const vals = c.points.map((p) => Math.log10(p.value));
        const at = (key) => c.points.map((p) => (p.at_selected && isNum(p.at_selected[key]) ? p.at_selected[key] : null));
        const chosen = c.points.find((p) => p.arm === c.chosen);
        ch.setData([vals, ...xs.map((k) => c.points.map((p) => { const q = p.per_pass[k - 1]; return q && isNum(q.mean) ? q.mean : null; })), at("mean"), at("val_mean")],
          chosen ? [{ x: Math.log10(chosen.value), label: "chosen on validation" }] : []);
      }
    }

    function renderRuns() {
      runsWrap.replaceChildren(h("table", { id: "runs-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Run"), h("th", {}, "Status"), h("th", { class: "num" }, "Passes"), h("th", {}, "Test NE by pass"), h("th", {}, "Error"))),
        h("tbody", {}, study.runs.map((r) => h("tr", { dataset: { run: r.key, status: r.status } },
          h("td", {}, r.job_id ? h("a", { href: `${ROOT}/ui/jobs/${enc(r.job_id)}` }, r.key) : r.key),
          h("td", {}, ui.statusBadge(r.status)),
          h("td", { class: "num" }, `${r.passes_done} / ${study.plan.passes}`),
          h("td", { class: "mono" }, r.test_ne.map(fmtNE).join("  ")),
          h("td", { class: "muted" }, r.error || ""))))));
    }

    function render() {
      renderHeader();
      renderRuns();
      const res = study.results;
      if (!res) return;
      renderAnswer(res);
      renderTable(res);
      renderCharts(res);
      notesEl.replaceChildren(...res.notes.filter((n) => n !== CHOICE_NOTE).map((n) => h("li", {}, n)), h("li", {},
        "Δ = NE(arm, seed s) − NE(baseline, seed s); mean over seeds with a 95% Student-t interval; lower NE is better (green / red: Holm-adjusted p < 0.05 over the arms of that comparison)."));
    }
    render();

    // live: the study's SSE stream re-renders the page on every change
    let es = null, backoff = 1000, stopped = false;
    async function connect() {
      if (stopped) return;
      // a short-lived stream ticket: the API token never goes into a URL
      let ticket;
      try {
        ticket = (await api(`/v1/studies/${enc(study.id)}/stream-ticket`, { method: "POST" })).ticket;
      } catch (e) {
        setTimeout(connect, backoff); backoff = Math.min(backoff * 2, 30000);
        return;
      }
      if (stopped) return;
      const q = new URLSearchParams({ ticket });
      es = new EventSource(`${ROOT}/v1/studies/${enc(study.id)}/events?${q}`);
      es.onopen = () => { backoff = 1000; conn.className = "conn live"; conn.textContent = "live"; };
      es.addEventListener("study", (e) => {
        try { study = JSON.parse(e.data); } catch (ex) { return; }
        document.body.dataset.studyUpdates = String((+document.body.dataset.studyUpdates || 0) + 1);
        render();
      });
      es.addEventListener("end", () => { es.close(); stopped = true; conn.className = "conn closed"; conn.textContent = "finished"; });
      es.onerror = () => {
        if (stopped) return;
        conn.className = "conn reconnecting"; conn.textContent = "reconnecting";
        if (es.readyState === EventSource.CLOSED) { setTimeout(connect, backoff); backoff = Math.min(backoff * 2, 30000); }
      };
    }
    if (STUDY_TERMINAL.has(study.status)) { conn.textContent = "finished"; } else connect();
  }

  pages.push(
    { name: "studies", nav: "studies", title: "Studies", match: (p) => (p === "/ui/studies" ? "" : null), render: pageStudies },
    { name: "study-new", nav: "studies", title: "New study", match: (p) => (p === "/ui/studies/new" ? "" : null), render: pageNewStudy },
    {
      name: "study", nav: "studies", title: "Study",
      match: (p) => { const m = /^\/ui\/studies\/([^/]+)$/.exec(p); return m ? decodeURIComponent(m[1]) : null; },
      render: pageStudy,
    },
  );
})();
