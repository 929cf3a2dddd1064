/* rectrain dashboard: jobs, one job (live NE), compare, submit. No build step, no framework.
 *
 * Talks to the REST API under /v1 with `Authorization: Bearer <token>`; the token is asked
 * for once and kept in sessionStorage (a 401 asks again). The job page follows the job's
 * Server-Sent Events stream and catches up through the metrics poll endpoint whenever the
 * stream (re)connects, so it survives dropped connections without a reload.
 */
(function () {
  "use strict";

  const ROOT = (window.RECTRAIN_ROOT || "").replace(/\/$/, "");
  const TOKEN_KEY = "rectrain.token";
  const THEME_KEY = "rectrain.theme";
  const STATUSES = ["queued", "starting", "running", "succeeded", "failed", "cancelled"];
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const ACTIVE = new Set(["queued", "starting", "running"]);
  const { Chart, PALETTE } = window.RectrainCharts;
  const main = document.getElementById("main");
  const timers = new Set();

  // ------------------------------------------------------------------ small helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c == null || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const enc = encodeURIComponent;
  const isNum = (v) => typeof v === "number" && isFinite(v);
  const fmtNE = (v) => (isNum(v) ? v.toFixed(4) : "–");
  const fmt3 = (v) => (isNum(v) ? v.toFixed(3) : "–");
  const fmtRate = (v) => (isNum(v) ? Math.round(v).toLocaleString("en-US") : "–");
  const fmtDelta = (v, digits = 4) => (isNum(v) ? (v > 0 ? "+" : v < 0 ? "−" : "±") + Math.abs(v).toFixed(digits) : "–");
  const fmtPct = (v) => (isNum(v) ? (v > 0 ? "+" : v < 0 ? "−" : "±") + Math.abs(v).toFixed(2) + "%" : "–");

  function toDate(t) {
    if (t == null || t === "") return null;
    if (typeof t === "number") return new Date(t < 1e12 ? t * 1000 : t);
    const d = new Date(t);
    return isNaN(d) ? null : d;
  }
  function fmtTime(t) {
    const d = toDate(t);
    if (!d) return "–";
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }
  function fmtDuration(a, b) {
    const s = toDate(a), e = toDate(b) || (s ? new Date() : null);
    if (!s) return "–";
    let sec = Math.max(0, Math.round((e - s) / 1000));
    const hh = Math.floor(sec / 3600); sec -= hh * 3600;
    const mm = Math.floor(sec / 60); sec -= mm * 60;
    return hh ? `${hh}h ${mm}m` : mm ? `${mm}m ${sec}s` : `${sec}s`;
  }

  function statusBadge(status) {
    return h("span", { class: `badge status-${status || "unknown"}`, dataset: { status: status || "" } }, status || "?");
  }
  // where a queued job stands: "#3 · waiting for 2 CPUs; 0 free" (null for other statuses)
  function queueInfo(j) {
    if (j.status !== "queued") return null;
    const pos = j.queue_position != null ? `#${j.queue_position} in queue` : "queued";
    return h("div", { class: "muted queue-info", style: "font-size:11px" },
      j.wait_reason ? `${pos} · ${j.wait_reason}` : pos);
  }
  const jobTitle = (j) => j.name || j.id;
  const shortId = (id) => (id && id.length > 12 ? id.slice(0, 8) : id);

  function every(ms, fn) {
    const t = setInterval(fn, ms);
    timers.add(t);
    return t;
  }
  function clearTimers() { for (const t of timers) clearInterval(t); timers.clear(); }

  // ------------------------------------------------------------------ auth + API

  const getToken = () => sessionStorage.getItem(TOKEN_KEY);
  let tokenPrompt = null;

  function askToken(message) {
    if (tokenPrompt) return tokenPrompt;
    const dlg = document.getElementById("token-dialog");
    const form = document.getElementById("token-form");
    const input = document.getElementById("token-input");
    const err = document.getElementById("token-error");
    err.textContent = message || "";
    input.value = "";
    tokenPrompt = new Promise((resolve) => {
      const onCancel = (e) => e.preventDefault();  // no token, no dashboard
      const onSubmit = async (e) => {
        e.preventDefault();
        const tok = input.value.trim();
        if (!tok) { err.textContent = "Enter a token."; return; }
        err.textContent = "checking…";
        try {
          const r = await fetch(`${ROOT}/v1/jobs?limit=1`, { headers: { Authorization: `Bearer ${tok}` } });
          if (r.status === 401 || r.status === 403) { err.textContent = `The API refused this token (${r.status}).`; return; }
        } catch (ex) {
          err.textContent = `Cannot reach the API: ${ex.message}`; return;
        }
        sessionStorage.setItem(TOKEN_KEY, tok);
        form.removeEventListener("submit", onSubmit);
        dlg.removeEventListener("cancel", onCancel);
        dlg.close();
        tokenPrompt = null;
        resolve(tok);
      };
      form.addEventListener("submit", onSubmit);
      dlg.addEventListener("cancel", onCancel);
      dlg.showModal();
      input.focus();
    });
    return tokenPrompt;
  }

  async function ensureToken() { return getToken() || askToken(); }

  class ApiError extends Error {
    constructor(status, body) {
      const d = body && body.detail;
      super(typeof d === "string" ? d : `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, opts = {}) {
    const token = await ensureToken();
    const headers = Object.assign({ Accept: "application/json" }, opts.headers || {}, { Authorization: `Bearer ${token}` });
    const init = { method: opts.method || "GET", headers };
    if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(opts.json); }
    const r = await fetch(ROOT + path, init);
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      await askToken("The API refused the token (401): enter it again.");
      return api(path, opts);
    }
    const text = await r.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (e) { body = { detail: text }; }
    if (!r.ok) throw new ApiError(r.status, body);
    return body;
  }

  // ------------------------------------------------------------------ theme

  function applyTheme(t) {
    if (t === "light" || t === "dark") document.documentElement.dataset.theme = t;
    else delete document.documentElement.dataset.theme;
    document.getElementById("theme-toggle").textContent = `Theme: ${t || "auto"}`;
    window.RectrainCharts.rebuildAll();
  }
  document.getElementById("theme-toggle").addEventListener("click", () => {
    const cur = localStorage.getItem(THEME_KEY) || "auto";
    const next = { auto: "light", light: "dark", dark: "auto" }[cur] || "auto";
    if (next === "auto") localStorage.removeItem(THEME_KEY); else localStorage.setItem(THEME_KEY, next);
    applyTheme(next);
  });
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    if (!localStorage.getItem(THEME_KEY)) window.RectrainCharts.rebuildAll();
  });
  document.getElementById("theme-toggle").textContent = `Theme: ${localStorage.getItem(THEME_KEY) || "auto"}`;
  document.getElementById("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });

  // ------------------------------------------------------------------ events of a job

  // Readers de-duplicate on (type, step, pass) (trainer/metrics/events.py): the same event
  // can arrive from the poll endpoint and the SSE stream, or twice across a resume.
  function eventKey(ev) {
    switch (ev.type) {
      case "train_window": case "pass": return `${ev.type}|${ev.pass}|${ev.step}`;
      case "status": return `status|${ev.status}`;
      default: return `${ev.type}|${ev.pass}|${ev.step}|${ev.phase || ""}|${ev.ts}`;
    }
  }

  function cmpId(a, b) {  // Redis stream ids "ms-seq"; anything else compares as text
    const pa = String(a).split("-").map(Number), pb = String(b).split("-").map(Number);
    if (pa.every(isFinite) && pb.every(isFinite)) {
      for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
        const x = pa[i] || 0, y = pb[i] || 0;
        if (x !== y) return x < y ? -1 : 1;
      }
      return 0;
    }
    return String(a) < String(b) ? -1 : String(a) > String(b) ? 1 : 0;
  }

  class JobStream {
    constructor(jobId, handlers) {
      this.jobId = jobId;
      this.h = handlers;  // onEvent(ev), onBatch(), onState(state), onDrop(), onEnd()
      this.cursor = null;
      this.keys = new Set();
      this.es = null;
      this.backoff = 1000;
      this.stopped = false;
      this.catching = null;
      this.lastCatchUp = 0;
      this.state = "connecting";
      this.reconnects = 0;
      this.sseEvents = 0;  // new events that arrived live (not through the poll)
    }

    setState(s) { if (s !== this.state) { this.state = s; this.h.onState(s); } }

    accept(id, ev) {
      if (id && (this.cursor == null || cmpId(id, this.cursor) > 0)) this.cursor = id;
      if (!ev || typeof ev !== "object" || !ev.type) return false;
      const k = eventKey(ev);
      if (this.keys.has(k)) return false;
      this.keys.add(k);
      this.h.onEvent(ev);
      return true;
    }

    /** Page through GET /metrics from the cursor until the stream's end. */
    catchUp() {
      if (this.catching) return this.catching;
      this.lastCatchUp = Date.now();
      this.catching = (async () => {
        try {
          const limit = 1000;
          for (let page = 0; page < 10000; page++) {
            const q = new URLSearchParams({ limit: String(limit) });
            if (this.cursor != null) q.set("after", this.cursor);
            const r = await api(`/v1/jobs/${enc(this.jobId)}/metrics?${q}`);
            const data = (r && r.data) || [];
            for (const item of data) this.accept(item.id, item.event || item);
            const next = r && r.next;
            if (next != null && (this.cursor == null || cmpId(next, this.cursor) > 0)) this.cursor = next;
            if (!data.length || data.length < limit || next == null) break;
          }
        } finally {
          this.catching = null;
          this.h.onBatch();
        }
      })();
      return this.catching;
    }

    async connect() {
      if (this.stopped) return;
      if (this.es) { this.es.close(); this.es = null; }
      // EventSource cannot send the Authorization header, and the API token must never go
      // into a URL (access logs): ask for a short-lived ticket for this job's stream.
      const gen = (this.connectGen = (this.connectGen || 0) + 1);
      let ticket;
      try {
        ticket = (await api(`/v1/jobs/${enc(this.jobId)}/stream-ticket`, { method: "POST" })).ticket;
      } catch (e) {
        if (gen === this.connectGen && !this.stopped) { this.setState("reconnecting"); this.scheduleReconnect(); }
        return;
      }
      if (gen !== this.connectGen || this.stopped) return;  // a newer connect() (or stop) won
      const q = new URLSearchParams({ ticket });
      if (this.cursor != null) q.set("after", this.cursor);
      const es = new EventSource(`${ROOT}/v1/jobs/${enc(this.jobId)}/events?${q}`);
      this.es = es;
      // The API says why before it ends a live stream (e.g. Redis unavailable): reconnect later.
      es.addEventListener("stream_error", () => {
        es.close();
        if (this.es === es) this.es = null;
        this.setState("reconnecting");
        this.reconnects++;
        this.scheduleReconnect();
        this.h.onDrop();
      });
      const onMessage = (e) => {
        let ev;
        try { ev = JSON.parse(e.data); } catch (ex) { return; }
        if (ev && typeof ev === "object" && !ev.type && e.type !== "message") ev.type = e.type;
        if (this.accept(e.lastEventId || null, ev)) this.sseEvents++;
        this.h.onBatch();
      };
      for (const t of ["train_window", "pass", "lifecycle", "status", "message"]) es.addEventListener(t, onMessage);
      // The API sends `end` once the job has finished and every event was sent, then closes.
      es.addEventListener("end", () => {
        es.close();
        if (this.es === es) this.es = null;
        this.h.onEnd();
      });
      es.onopen = () => {
        this.backoff = 1000;
        this.setState("live");
        this.catchUp().catch(() => {});  // anything written between our poll and the stream's start
      };
      es.onerror = () => {
        if (this.stopped) { es.close(); return; }
        this.setState("reconnecting");
        this.reconnects++;
        if (es.readyState === EventSource.CLOSED) {  // the browser gave up (HTTP error): we retry
          if (this.es === es) this.es = null;
          this.scheduleReconnect();
        } else if (Date.now() - this.lastCatchUp > 2000) {  // the browser retries with Last-Event-ID
          this.catchUp().catch(() => {});
        }
        this.h.onDrop();
      };
    }

    scheduleReconnect() {
      clearTimeout(this.timer);
      const delay = this.backoff;
      this.backoff = Math.min(this.backoff * 2, 30000);
      this.timer = setTimeout(async () => {
        if (this.stopped) return;
        try { await this.catchUp(); } catch (e) { /* the API may still be down */ }
        this.connect();
      }, delay);
    }

    /** Drop the SSE connection on purpose (used by tests and the "reconnect" link). */
    drop() { if (this.es) { this.es.close(); this.es = null; } this.setState("reconnecting"); this.scheduleReconnect(); }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      if (this.es) { this.es.close(); this.es = null; }
      this.setState("closed");
    }
  }

  // ------------------------------------------------------------------ page: jobs

  async function pageJobs() {
    const params = new URLSearchParams(location.search);
    const state = {
      status: params.get("status") || "",
      offset: Math.max(0, parseInt(params.get("offset") || "0", 10) || 0),
      limit: 50,
      selected: new Set(),
      confirm: new Map(),  // job id -> time the cancel button was first clicked
      jobs: [],
    };
    const statusSel = h("select", { id: "status-filter", "aria-label": "Filter by status" },
      h("option", { value: "" }, "all statuses"), STATUSES.map((s) => h("option", { value: s }, s)));
    statusSel.value = state.status;
    const auto = h("input", { type: "checkbox", id: "auto-refresh", checked: true });
    const compareBtn = h("button", { type: "button", id: "compare-selected", disabled: true }, "Compare selected");
    const countEl = h("span", { class: "muted", id: "jobs-count" });
    const errEl = h("p", { class: "error", role: "alert" });
    const tbody = h("tbody");
    const prev = h("button", { type: "button", class: "ghost small" }, "← newer");
    const next = h("button", { type: "button", class: "ghost small" }, "older →");
    const table = h("table", { id: "jobs-table" },
      h("thead", {}, h("tr", {},
        h("th", {}, ""), h("th", {}, "Name"), h("th", {}, "Status"), h("th", {}, "Owner"), h("th", {}, "Created"),
        h("th", { class: "num" }, "Passes"), h("th", { class: "num", title: "test NE at the pass with the lowest validation NE (without validation data: the last pass)" }, "Test NE (selected pass)"),
        h("th", { class: "num" }, "Examples/s"), h("th", {}, ""))),
      tbody);
    main.replaceChildren(
      h("div", { class: "page-head" }, h("h1", {}, "Jobs"), h("span", { class: "spacer" }),
        h("a", { class: "button", href: `${ROOT}/ui/submit` }, "New job")),
      h("div", { class: "panel" },
        h("div", { class: "filters" },
          h("label", { for: "status-filter", style: "margin:0" }, "Status"), statusSel,
          h("label", { style: "margin:0;font-weight:normal", class: "row" }, auto, "auto-refresh"),
          compareBtn, h("span", { class: "spacer" }), countEl),
        errEl,
        h("div", { class: "table-wrap" }, table),
        h("div", { class: "row end", style: "margin-top:8px" }, prev, next)));

    function syncUrl() {
      const q = new URLSearchParams();
      if (state.status) q.set("status", state.status);
      if (state.offset) q.set("offset", String(state.offset));
      history.replaceState(null, "", `${location.pathname}${q.toString() ? "?" + q : ""}`);
    }
    function updateCompare() {
      compareBtn.disabled = state.selected.size < 1;
      compareBtn.textContent = `Compare selected (${state.selected.size})`;
    }

    function row(j) {
      const s = j.summary || {};
      const cb = h("input", { type: "checkbox", "aria-label": `select ${jobTitle(j)}`, checked: state.selected.has(j.id),
        onchange: (e) => { if (e.target.checked) state.selected.add(j.id); else state.selected.delete(j.id); updateCompare(); } });
      let action = null;
      if (ACTIVE.has(j.status)) {
        const pending = state.confirm.has(j.id) && Date.now() - state.confirm.get(j.id) < 4000;
        action = h("button", { type: "button", class: "danger small", dataset: { action: "cancel" },
          onclick: async (e) => {
            if (!(state.confirm.has(j.id) && Date.now() - state.confirm.get(j.id) < 4000)) {
              state.confirm.set(j.id, Date.now());
              e.target.textContent = "confirm cancel";
              return;
            }
            state.confirm.delete(j.id);
            e.target.disabled = true;
            try { await api(`/v1/jobs/${enc(j.id)}/cancel`, { method: "POST" }); errEl.textContent = ""; }
            catch (ex) { errEl.textContent = `cancel ${jobTitle(j)}: ${ex.message}`; }
            refresh();
          } }, pending ? "confirm cancel" : "cancel");
      }
      const passes = j.num_passes != null ? `${j.passes_done ?? 0} / ${j.num_passes}` : String(j.passes_done ?? "–");
      return h("tr", { dataset: { jobId: j.id, status: j.status } },
        h("td", {}, cb),
        h("td", {}, h("a", { href: `${ROOT}/ui/jobs/${enc(j.id)}` }, jobTitle(j)),
          j.name ? h("div", { class: "muted mono", style: "font-size:11px" }, shortId(j.id)) : null),
        h("td", {}, statusBadge(j.status), queueInfo(j)),
        h("td", {}, j.owner || "–"),
        h("td", {}, fmtTime(j.created_at)),
        h("td", { class: "num" }, passes),
        (() => { const hl = headlineOf(s); return h("td", { class: "num", dataset: { headline: "" } }, fmtNE(hl.ne),
          hl.note ? h("div", { class: "muted", style: "font-size:11px" }, hl.note) : null); })(),
        h("td", { class: "num" }, fmtRate(s.last_examples_per_s)),
        h("td", {}, action));
    }

    async function refresh() {
      const q = new URLSearchParams({ limit: String(state.limit), offset: String(state.offset) });
      if (state.status) q.set("status", state.status);
      try {
        const r = await api(`/v1/jobs?${q}`);
        state.jobs = (r && r.data) || [];
        const count = r && r.count != null ? r.count : state.jobs.length;
        tbody.replaceChildren(...state.jobs.map(row));
        if (!state.jobs.length) tbody.appendChild(h("tr", {}, h("td", { colspan: "9", class: "muted" },
          state.status ? `No ${state.status} jobs.` : "No jobs yet — submit one.")));
        const first = state.jobs.length ? state.offset + 1 : 0;
        countEl.textContent = `${first}–${state.offset + state.jobs.length} of ${count}`;
        prev.disabled = state.offset === 0;
        next.disabled = state.offset + state.jobs.length >= count;
        errEl.textContent = "";
      } catch (ex) {
        errEl.textContent = `Could not load jobs: ${ex.message}`;
      }
    }

    statusSel.addEventListener("change", () => { state.status = statusSel.value; state.offset = 0; syncUrl(); refresh(); });
    prev.addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); syncUrl(); refresh(); });
    next.addEventListener("click", () => { state.offset += state.limit; syncUrl(); refresh(); });
    compareBtn.addEventListener("click", () => {
      location.href = `${ROOT}/ui/compare?ids=${[...state.selected].map(enc).join(",")}`;
    });
    updateCompare();
    await refresh();
    every(3000, () => { if (auto.checked && !document.hidden) refresh(); });
  }

  // ------------------------------------------------------------------ page: one job

  function mergePasses(job, passEvents) {
    const rows = new Map();
    for (const p of ((job && job.summary && job.summary.passes) || [])) if (p && p.pass != null) rows.set(p.pass, p);
    for (const [k, ev] of passEvents) rows.set(k, Object.assign({}, rows.get(k) || {}, ev));
    return [...rows.values()].sort((a, b) => a.pass - b.pass);
  }

  /**
   * The pass selected by validation NE (lowest val_ne, earliest on ties; the same rule
   * as the trainer's results.json) and the last pass. Without validation data nothing
   * is selected and the last pass is shown instead; the test days never select.
   */
  function selection(passes) {
    let sel = null;
    for (const p of passes) if (isNum(p.val_ne) && (sel == null || p.val_ne < sel.val_ne)) sel = p;
    const last = passes.length ? passes[passes.length - 1] : null;
    const oracle = (k) => { for (const p of passes) if (isNum(p[k])) return p[k]; return null; };
    return { sel, last, oracleVal: oracle("oracle_val_ne"), oracleTest: oracle("oracle_test_ne") };
  }

  /** Headline of a job summary: test NE at the selected pass, or "no validation data" and the last pass. */
  function headlineOf(s) {
    s = s || {};
    if (s.selected_pass != null) return { ne: s.test_ne_at_selected, note: `selected pass ${s.selected_pass + 1}` };
    if (s.last_pass != null) return { ne: s.test_ne_at_last, note: `no validation data · last pass ${s.last_pass + 1}` };
    return { ne: null, note: "" };
  }

  function stratum(p, name) { return p.test_ne_by_stratum ? p.test_ne_by_stratum[name] : undefined; }

  function regularizerSummary(spec) {
    const regs = (spec && spec.regularizers) || [];
    if (!regs.length) return "none";
    return regs.map((r) => {
      const params = Object.entries(r).filter(([k, v]) => k !== "type" && v !== false && v != null).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
      return params.length ? `${r.type}(${params.join(", ")})` : r.type;
    }).join(" + ");
  }

  async function pageJob(jobId) {
    let job;
    try { job = await api(`/v1/jobs/${enc(jobId)}`); }
    catch (ex) {
      main.replaceChildren(h("div", { class: "panel" }, h("h1", {}, "Job not found"),
        h("p", { class: "error" }, `${jobId}: ${ex.message}`), h("a", { href: `${ROOT}/` }, "← all jobs")));
      return;
    }
    const m = { windows: new Map(), passes: new Map(), passStarts: new Map(), lifecycleStarts: new Set(), log: [] };

    // header
    const title = h("h1", { id: "job-title" });
    const badgeSlot = h("span", { id: "job-status" });
    const conn = h("span", { class: "conn closed", id: "conn-state" }, "");
    const metaEl = h("div", { class: "meta", id: "job-meta" });
    const actions = h("div", { class: "row" });
    const errorPanel = h("div", { class: "panel", id: "job-error", hidden: true });
    const actionErr = h("p", { class: "error", role: "alert" });

    // charts
    const chartsEl = h("div", { class: "charts" });
    const trainChart = new Chart(chartsEl, {
      id: "chart-train-ne", title: "Train NE (windowed) by step", xLabel: "step", yLabel: "normalized entropy",
      series: [{ label: "window NE", color: PALETTE[0] }, { label: "lifetime NE (this pass)", color: PALETTE[1], dash: [6, 4] }],
      emptyText: "waiting for the first training window…",
    });
    const gapChart = new Chart(chartsEl, {
      id: "chart-pass-ne", title: "Train, validation and test NE by pass (overfitting gap)", xLabel: "pass", yLabel: "normalized entropy",
      xKind: "pass", series: [{ label: "train NE", color: PALETTE[0] }, { label: "validation NE", color: PALETTE[2], dash: [6, 4] },
        { label: "test NE", color: PALETTE[3] }],
      emptyText: "appears after the first pass",
    });
    const strataChart = new Chart(chartsEl, {
      id: "chart-strata", title: "Test NE by ad-frequency stratum", xLabel: "pass", yLabel: "normalized entropy",
      xKind: "pass", series: [
        { label: "frequent", color: PALETTE[2] }, { label: "medium", color: PALETTE[1] },
        { label: "rare", color: PALETTE[4] }, { label: "all", color: PALETTE[3], dash: [6, 4] }],
      emptyText: "appears after the first pass",
    });
    const calibChart = new Chart(chartsEl, {
      id: "chart-calibration", title: "Test calibration by pass (predicted / actual CTR)", xLabel: "pass",
      yLabel: "calibration", yFormat: "ratio", xKind: "pass", minSpan: 0.1, includeY: 1,
      refLines: [{ y: 1, label: "1.0 = calibrated" }],
      series: [{ label: "test calibration", color: PALETTE[5] }], emptyText: "appears after the first pass",
    });
    const rateChart = new Chart(chartsEl, {
      id: "chart-throughput", title: "Throughput by step", xLabel: "step", yLabel: "examples / s", yFormat: "rate",
      minSpan: 1, series: [{ label: "examples/s", color: PALETTE[6] }], emptyText: "waiting for the first training window…",
    });

    const passTableWrap = h("div", { class: "panel", id: "pass-panel", hidden: true });
    const specPre = h("pre", { id: "job-spec" });
    const logPre = h("pre", { class: "log", id: "job-log" });

    main.replaceChildren(
      h("div", { class: "page-head" },
        h("div", {}, h("div", { class: "row" }, title, badgeSlot, conn), metaEl),
        h("span", { class: "spacer" }), actions),
      actionErr, errorPanel, chartsEl, passTableWrap,
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "Spec"), specPre),
        h("div", { class: "panel" }, h("h2", {}, "Events"), logPre)));

    let deleteArmed = 0;
    function renderHeader() {
      title.textContent = jobTitle(job);
      badgeSlot.replaceChildren(statusBadge(job.status));
      if (job.cancel_requested && ACTIVE.has(job.status)) badgeSlot.appendChild(h("span", { class: "muted" }, " cancelling…"));
      const q = queueInfo(job);
      if (q) { q.id = "job-queue"; badgeSlot.appendChild(q); }
      const s = job.summary || {};
      const lastWin = m.windows.size ? m.windows.get(Math.max(...m.windows.keys())) : null;
      const parts = [
        `id ${job.id}`, `owner ${job.owner || "–"}`, `created ${fmtTime(job.created_at)}`,
        job.started_at ? `ran ${fmtDuration(job.started_at, job.finished_at)}` : null,
        `passes ${job.passes_done ?? 0} / ${job.num_passes ?? "?"}`,
        (() => {
          const { sel, last } = selection(mergePasses(job, m.passes));
          if (sel) return `selected pass ${sel.pass + 1} (lowest validation NE ${fmtNE(sel.val_ne)}): test NE ${fmtNE(sel.test_ne)}`;
          if (last) return `no validation data: last pass ${last.pass + 1} test NE ${fmtNE(last.test_ne)}`;
          return null;
        })(),
        (() => {
          const { oracleVal, oracleTest } = selection(mergePasses(job, m.passes));
          return oracleVal != null || oracleTest != null ? `oracle NE validation ${fmtNE(oracleVal)} · test ${fmtNE(oracleTest)}` : null;
        })(),
        lastWin ? `step ${lastWin.step.toLocaleString("en-US")}` : null,
        isNum(s.last_examples_per_s) || lastWin ? `${fmtRate(lastWin ? lastWin.examples_per_s : s.last_examples_per_s)} ex/s` : null,
        `regularizers: ${regularizerSummary(job.spec)}`,
      ].filter(Boolean);
      if (job.labels && Object.keys(job.labels).length) parts.push("labels " + Object.entries(job.labels).map(([k, v]) => `${k}=${v}`).join(", "));
      metaEl.textContent = parts.join(" · ");
      const btns = [];
      if (ACTIVE.has(job.status)) {
        btns.push(h("button", { type: "button", class: "danger", id: "cancel-job", onclick: async (e) => {
          e.target.disabled = true;
          try { await api(`/v1/jobs/${enc(job.id)}/cancel`, { method: "POST" }); actionErr.textContent = ""; }
          catch (ex) { actionErr.textContent = `cancel: ${ex.message}`; }
          refreshJob();
        } }, "Cancel job"));
      }
      if (job.labels && job.labels.study) btns.push(h("a", { class: "button", id: "job-study", href: `${ROOT}/ui/studies/${enc(job.labels.study)}` }, "Study"));
      btns.push(h("a", { class: "button", href: `${ROOT}/ui/compare?ids=${enc(job.id)}` }, "Compare…"));
      btns.push(h("a", { class: "button", href: `${ROOT}/ui/submit?from=${enc(job.id)}` }, "Clone spec"));
      if (job.status === "succeeded") {
        btns.push(h("button", { type: "button", id: "download-model", onclick: async (e) => {
          e.target.disabled = true;
          try { await downloadModel(job.id); actionErr.textContent = ""; }
          catch (ex) { actionErr.textContent = `download: ${ex.message}`; }
          e.target.disabled = false;
        } }, "Download model"));
        btns.push(h("a", { class: "button", id: "continue-job", href: `${ROOT}/ui/submit?from=${enc(job.id)}&continue=1` },
          "Continue on new days"));
      }
      if (TERMINAL.has(job.status)) {
        btns.push(h("button", { type: "button", class: "danger", id: "delete-job", onclick: async (e) => {
          if (Date.now() - deleteArmed > 4000) { deleteArmed = Date.now(); e.target.textContent = "Confirm delete"; return; }
          try { await api(`/v1/jobs/${enc(job.id)}`, { method: "DELETE" }); location.href = `${ROOT}/`; }
          catch (ex) { actionErr.textContent = `delete: ${ex.message}`; }
        } }, "Delete"));
      }
      actions.replaceChildren(...btns);
      const errText = job.error || null;
      const tail = job.log_tail || job.logs || null;
      errorPanel.hidden = !errText && !tail;
      errorPanel.replaceChildren(
        errText ? h("h2", { class: "error" }, "Error") : h("h2", {}, "Log tail"),
        errText ? h("pre", { id: "job-error-text" }, typeof errText === "string" ? errText : JSON.stringify(errText, null, 2)) : null,
        tail ? h("pre", { class: "log" }, Array.isArray(tail) ? tail.join("\n") : String(tail)) : null);
    }

    function renderCharts() {
      const steps = [...m.windows.keys()].sort((a, b) => a - b);
      const wins = steps.map((s) => m.windows.get(s));
      const val = (v) => (isNum(v) ? v : null);
      const markers = [...m.passStarts.entries()].filter(([p]) => p > 0).map(([p, step]) => ({ x: step, label: `pass ${p + 1}` }));
      trainChart.setData([steps, wins.map((w) => val(w.ne_window)), wins.map((w) => val(w.ne_lifetime))], markers);
      rateChart.setData([steps, wins.map((w) => val(w.examples_per_s))], markers);
      const rows = mergePasses(job, m.passes);
      // x spans every planned pass from the start, so the axis does not jump as passes land.
      const nPasses = Math.max(job.num_passes || 0, ...rows.map((p) => p.pass + 1), 1);
      const xs = Array.from({ length: nPasses }, (_, i) => i + 1);
      const byPass = new Map(rows.map((p) => [p.pass, p]));
      const col = (f) => xs.map((x) => { const p = byPass.get(x - 1); return p ? val(f(p)) : null; });
      gapChart.setData([xs, col((p) => p.train_ne), col((p) => p.val_ne), col((p) => p.test_ne)]);
      strataChart.setData([xs, col((p) => stratum(p, "frequent")), col((p) => stratum(p, "medium")),
        col((p) => stratum(p, "rare")), col((p) => p.test_ne)]);
      calibChart.setData([xs, col((p) => p.test_calibration)]);
      renderPassTable(rows);
    }

    function renderPassTable(rows) {
      passTableWrap.hidden = rows.length === 0;
      if (!rows.length) return;
      const { sel, oracleVal, oracleTest } = selection(rows);
      const body = rows.map((p) => {
        const gap = isNum(p.test_ne) && isNum(p.train_ne) ? p.test_ne - p.train_ne : null;
        return h("tr", { class: p === sel ? "selected" : null, dataset: { pass: String(p.pass) } },
          h("td", {}, `${p.pass + 1}${p === sel ? " ★" : ""}`),
          h("td", { class: "num" }, fmtNE(p.train_ne)),
          h("td", { class: "num" }, fmtNE(p.val_ne)),
          h("td", { class: "num" }, fmtNE(p.test_ne)),
          h("td", { class: "num" }, fmtDelta(gap)),
          h("td", { class: "num" }, fmtNE(stratum(p, "frequent"))),
          h("td", { class: "num" }, fmtNE(stratum(p, "medium"))),
          h("td", { class: "num" }, fmtNE(stratum(p, "rare"))),
          h("td", { class: "num" }, fmt3(p.test_calibration)),
          h("td", { class: "num" }, fmt3(p.test_auc)),
          h("td", { class: "num" }, fmtRate(p.examples_per_s)));
      });
      passTableWrap.replaceChildren(
        h("h2", {}, "Per pass ", h("span", { class: "muted", style: "font-weight:normal;font-size:13px" },
          sel ? "— ★ selected pass: lowest validation NE (its test NE is the result); gap = test − train"
            : "— no validation data: no pass is selected, the last pass is the result; gap = test − train")),
        h("div", { class: "table-wrap" }, h("table", { id: "pass-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "Pass"), h("th", { class: "num" }, "Train NE"), h("th", { class: "num" }, "Val NE"),
            h("th", { class: "num" }, "Test NE"),
            h("th", { class: "num" }, "Gap"), h("th", { class: "num" }, "NE frequent"), h("th", { class: "num" }, "NE medium"),
            h("th", { class: "num" }, "NE rare"), h("th", { class: "num" }, "Calibration"), h("th", { class: "num" }, "AUC"),
            h("th", { class: "num" }, "Examples/s"))),
          h("tbody", {}, body))),
        oracleVal != null || oracleTest != null ? h("p", { class: "muted", id: "oracle-ne" },
          `Oracle NE (the generator's true click probabilities; no model does better in expectation): validation ${fmtNE(oracleVal)} · test ${fmtNE(oracleTest)}`) : null);
    }

    function renderLog() {
      const lines = m.log.slice(-200).map((ev) => {
        const t = ev.ts ? fmtTime(ev.ts).slice(11) : "";
        if (ev.type === "status") return `${t}  status → ${ev.status}`;
        const where = ev.pass >= 0 ? ` pass ${ev.pass + 1}` : "";
        return `${t}  [${ev.phase || ev.type}${where}] ${ev.message || ""}`.trimEnd();
      });
      logPre.textContent = lines.length ? lines.join("\n") : "no lifecycle events yet";
      logPre.scrollTop = logPre.scrollHeight;
    }

    let renderPending = false;
    function scheduleRender() {
      if (renderPending) return;
      renderPending = true;
      setTimeout(() => { renderPending = false; renderCharts(); renderLog(); renderHeader(); }, 150);
    }

    function onEvent(ev) {
      switch (ev.type) {
        case "train_window": {
          m.windows.set(ev.step, ev);
          const s = m.passStarts.get(ev.pass);
          if (s == null || (ev.step < s && !m.lifecycleStarts.has(ev.pass))) m.passStarts.set(ev.pass, ev.step);
          break;
        }
        case "pass": m.passes.set(ev.pass, ev); break;
        case "lifecycle":
          m.log.push(ev);
          if (ev.phase === "pass_started" && ev.pass >= 0) {
            m.lifecycleStarts.add(ev.pass);
            m.passStarts.set(ev.pass, ev.step);
          }
          if (ev.phase === "finished" || ev.phase === "failed") refreshJob();
          break;
        case "status":
          m.log.push(ev);
          if (ev.status && ev.status !== job.status) { job.status = ev.status; refreshJob(); }
          break;
        default: break;
      }
    }

    const stream = new JobStream(job.id, {
      onEvent,
      onBatch: scheduleRender,
      onState: (s) => {
        conn.className = `conn ${s}`;
        conn.textContent = { live: "live", reconnecting: "reconnecting…", closed: TERMINAL.has(job.status) ? "finished" : "not connected", connecting: "connecting…" }[s] || s;
      },
      onDrop: () => refreshJob(),
      onEnd: async () => {
        await refreshJob();
        if (!stream.stopped) stream.scheduleReconnect();  // `end` raced a status we have not seen yet
      },
    });
    window.rectrainDebug = { stream, model: m, get job() { return job; } };

    let refreshing = null;
    async function refreshJob() {
      if (refreshing) return refreshing;
      refreshing = (async () => {
        try {
          job = await api(`/v1/jobs/${enc(jobId)}`);
          if (TERMINAL.has(job.status) && !stream.stopped) {
            await stream.catchUp().catch(() => {});
            stream.stop();
          }
        } catch (ex) {
          if (ex.status === 404) { actionErr.textContent = "This job no longer exists."; stream.stop(); }
        } finally {
          refreshing = null;
          scheduleRender();
        }
      })();
      return refreshing;
    }

    specPre.textContent = job.spec ? jsyaml.dump(job.spec, { lineWidth: 100 }) : "–";
    renderHeader();
    await stream.catchUp().catch((ex) => { actionErr.textContent = `metrics: ${ex.message}`; });
    renderCharts(); renderLog();
    if (TERMINAL.has(job.status)) {
      stream.stop();
    } else {
      stream.connect();
      every(5000, () => {
        if (stream.stopped) return;
        refreshJob();
        if (stream.state !== "live" && Date.now() - stream.lastCatchUp > 4000) stream.catchUp().catch(() => {});
      });
    }
  }

  // ------------------------------------------------------------------ page: compare

  async function passesOf(job) {
    const passes = (job.summary && job.summary.passes) || [];
    if (passes.length || !(job.passes_done > 0)) return passes;
    // No summary (yet): read the job's pass events from the metrics stream.
    const out = new Map();
    let after = null;
    for (let page = 0; page < 100; page++) {
      const q = new URLSearchParams({ limit: "1000" });
      if (after != null) q.set("after", after);
      const r = await api(`/v1/jobs/${enc(job.id)}/metrics?${q}`);
      const data = (r && r.data) || [];
      for (const it of data) { const ev = it.event || it; if (ev.type === "pass") out.set(ev.pass, ev); }
      after = r && r.next != null ? r.next : data.length ? data[data.length - 1].id : null;
      if (!data.length || data.length < 1000 || r.next == null) break;
    }
    return [...out.values()].sort((a, b) => a.pass - b.pass);
  }

  async function pageCompare() {
    const params = new URLSearchParams(location.search);
    const state = {
      ids: (params.get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean),
      baseline: params.get("baseline") || "",
      all: [],
      details: new Map(),  // id -> {job, passes}
    };
    const picker = h("div", { class: "picker", id: "compare-picker" });
    const baselineSel = h("select", { id: "baseline-select", "aria-label": "Baseline job" });
    const errEl = h("p", { class: "error", role: "alert" });
    const charts = h("div", { class: "charts" });
    const testChart = new Chart(charts, {
      id: "chart-compare", title: "Test NE by pass", xLabel: "pass", yLabel: "test normalized entropy",
      xKind: "pass", series: [], emptyText: "pick jobs to compare",
    });
    const gapChart = new Chart(charts, {
      id: "chart-compare-gap", title: "Overfitting gap by pass (test NE − train NE)", xLabel: "pass",
      yLabel: "NE gap", xKind: "pass", minSpan: 0.01, series: [], emptyText: "pick jobs to compare",
    });
    const tableWrap = h("div", { class: "table-wrap" });

    main.replaceChildren(
      h("div", { class: "page-head" }, h("h1", {}, "Compare jobs"), h("span", { class: "spacer" }),
        h("span", { class: "muted" }, "lower NE is better; Δ < 0 means better than the baseline")),
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "Jobs"), picker),
        h("div", { class: "panel" }, h("h2", {}, "Baseline"), baselineSel,
          h("p", { class: "muted" }, "Δ columns subtract the baseline job's value. Pick the run without the regularizer under test."))),
      errEl, charts,
      h("div", { class: "panel" }, h("h2", {}, "Summary"), tableWrap));

    function syncUrl() {
      const q = new URLSearchParams();
      if (state.ids.length) q.set("ids", state.ids.join(","));
      if (state.baseline) q.set("baseline", state.baseline);
      history.replaceState(null, "", `${location.pathname}?${q}`);
    }

    function renderPicker() {
      const known = new Map(state.all.map((j) => [j.id, j]));
      for (const id of state.ids) if (!known.has(id) && state.details.has(id)) known.set(id, state.details.get(id).job);
      picker.replaceChildren(...[...known.values()].map((j) => h("label", {},
        h("input", { type: "checkbox", value: j.id, checked: state.ids.includes(j.id), onchange: (e) => {
          if (e.target.checked) state.ids.push(j.id); else state.ids = state.ids.filter((x) => x !== j.id);
          if (!state.ids.includes(state.baseline)) state.baseline = state.ids[0] || "";
          syncUrl(); load();
        } }),
        statusBadge(j.status), h("span", {}, jobTitle(j)),
        h("span", { class: "muted" }, (() => { const hl = headlineOf(j.summary); return `test NE ${fmtNE(hl.ne)}${hl.note ? ` (${hl.note})` : ""} · ${regularizerSummary(j.spec)}`; })()))));
      if (!known.size) picker.replaceChildren(h("p", { class: "muted", style: "padding:8px" }, "No jobs yet."));
    }

    function render() {
      const chosen = state.ids.filter((id) => state.details.has(id)).map((id) => state.details.get(id));
      baselineSel.replaceChildren(...chosen.map(({ job }) => h("option", { value: job.id }, jobTitle(job))));
      if (!chosen.some((c) => c.job.id === state.baseline)) state.baseline = chosen.length ? chosen[0].job.id : "";
      baselineSel.value = state.baseline;

      const maxPass = Math.max(0, ...chosen.map((c) => Math.max(c.job.num_passes || 0, ...c.passes.map((p) => p.pass + 1))));
      const xs = Array.from({ length: maxPass }, (_, i) => i + 1);
      const series = chosen.map((c, i) => ({ label: jobTitle(c.job), color: PALETTE[i % PALETTE.length] }));
      const byPass = (c, f) => xs.map((x) => { const p = c.passes.find((q) => q.pass === x - 1); const v = p ? f(p) : null; return isNum(v) ? v : null; });
      const sig = JSON.stringify(series);
      if (testChart.sig !== sig) { testChart.setSeries(series); gapChart.setSeries(series); testChart.sig = sig; }
      testChart.setData([xs, ...chosen.map((c) => byPass(c, (p) => p.test_ne))]);
      gapChart.setData([xs, ...chosen.map((c) => byPass(c, (p) => (isNum(p.test_ne) && isNum(p.train_ne) ? p.test_ne - p.train_ne : null)))]);

      // the headline row of a job: the pass selected by validation NE, or (no validation data) the last pass
      const stats = (c) => {
        const { sel, last, oracleTest } = selection(c.passes);
        return { head: sel || last, selected: !!sel, last, oracleTest };
      };
      const base = chosen.find((c) => c.job.id === state.baseline);
      const bs = base ? stats(base) : null;
      const cls = (d) => (isNum(d) ? (d < 0 ? "num better" : d > 0 ? "num worse" : "num") : "num");
      const rows = chosen.map((c, i) => {
        const { head, selected, last, oracleTest } = stats(c);
        const isBase = base && c === base;
        const dHead = !isBase && head && bs && bs.head && isNum(head.test_ne) && isNum(bs.head.test_ne) ? head.test_ne - bs.head.test_ne : null;
        const dPct = isNum(dHead) ? (100 * dHead) / bs.head.test_ne : null;
        const dLast = !isBase && last && bs && bs.last && isNum(last.test_ne) && isNum(bs.last.test_ne) ? last.test_ne - bs.last.test_ne : null;
        return h("tr", { dataset: { jobId: c.job.id } },
          h("td", {}, h("span", { style: `display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;background:${PALETTE[i % PALETTE.length]}` }),
            h("a", { href: `${ROOT}/ui/jobs/${enc(c.job.id)}` }, jobTitle(c.job)), isBase ? h("span", { class: "muted" }, " (baseline)") : null),
          h("td", {}, statusBadge(c.job.status)),
          h("td", {}, regularizerSummary(c.job.spec)),
          h("td", { class: "num" }, `${c.passes.length} / ${c.job.num_passes ?? "?"}`),
          h("td", { class: "num" }, head ? (selected ? String(head.pass + 1) : `no validation data (last: ${head.pass + 1})`) : "–"),
          h("td", { class: "num" }, fmtNE(head && head.test_ne)),
          h("td", { class: cls(dHead) }, isBase ? "baseline" : fmtDelta(dHead)),
          h("td", { class: cls(dPct) }, isBase ? "" : fmtPct(dPct)),
          h("td", { class: "num" }, fmtNE(last && last.test_ne)),
          h("td", { class: cls(dLast) }, isBase ? "" : fmtDelta(dLast)),
          h("td", { class: "num" }, selected && last && isNum(last.test_ne) && isNum(head.test_ne) ? fmtDelta(last.test_ne - head.test_ne) : "–"),
          h("td", { class: "num" }, fmtNE(oracleTest)));
      });
      tableWrap.replaceChildren(chosen.length ? h("table", { id: "compare-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", {}, "Status"), h("th", {}, "Regularizers"),
          h("th", { class: "num" }, "Passes"),
          h("th", { class: "num", title: "the pass with the lowest validation NE; without validation data none is selected and the last pass is shown" }, "Selected pass"),
          h("th", { class: "num" }, "Test NE (selected)"),
          h("th", { class: "num" }, "Δ vs baseline"), h("th", { class: "num" }, "Δ %"),
          h("th", { class: "num" }, "Final test NE"), h("th", { class: "num" }, "Δ final"),
          h("th", { class: "num", title: "final test NE − test NE at the selected pass: how much later passes overfit" }, "Overfit (final − selected)"),
          h("th", { class: "num", title: "NE of the generator's true click probabilities on the test days (synthetic data)" }, "Oracle test NE"))),
        h("tbody", {}, rows)) : h("p", { class: "muted" }, "Pick two or more jobs on the left."));
    }

    async function load() {
      try {
        const r = await api("/v1/jobs?limit=200");
        state.all = (r && r.data) || [];
        if (!state.ids.length) {  // default: the two most recent finished jobs
          state.ids = state.all.filter((j) => j.status === "succeeded").slice(0, 2).map((j) => j.id);
          if (state.ids.length) syncUrl();
        }
        const fresh = await Promise.all(state.ids.map(async (id) => {
          try {
            const job = await api(`/v1/jobs/${enc(id)}`);
            return [id, { job, passes: await passesOf(job) }];
          } catch (ex) { errEl.textContent = `${id}: ${ex.message}`; return null; }
        }));
        for (const f of fresh) if (f) state.details.set(f[0], f[1]);
        renderPicker();
        render();
      } catch (ex) {
        errEl.textContent = `Could not load jobs: ${ex.message}`;
      }
    }

    baselineSel.addEventListener("change", () => { state.baseline = baselineSel.value; syncUrl(); render(); });
    await load();
    every(5000, () => {
      if (document.hidden) return;
      if ([...state.details.values()].some((d) => ACTIVE.has(d.job.status))) load();
    });
  }

  // ------------------------------------------------------------------ page: submit

  /** Best-effort: the 1-based line of a key path (["model", "hash_size"]) in YAML/JSON text. */
  function lineOfPath(text, path) {
    const lines = text.split("\n");
    let from = 0, indent = -1;
    let found = -1;
    for (const key of path) {
      if (typeof key === "number" || /^\d+$/.test(String(key))) continue;
      const re = new RegExp(`^(\\s*)(?:-\\s+)?["']?${String(key).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}["']?\\s*:`);
      let hit = -1;
      for (let i = from; i < lines.length; i++) {
        const mm = re.exec(lines[i]);
        if (mm && mm[1].length > indent) { hit = i; indent = mm[1].length; break; }
      }
      if (hit < 0) break;
      found = hit; from = hit + 1;
    }
    return found >= 0 ? found + 1 : null;
  }

  function selectLine(textarea, line) {
    const lines = textarea.value.split("\n");
    let start = 0;
    for (let i = 0; i < line - 1; i++) start += lines[i].length + 1;
    textarea.focus();
    textarea.setSelectionRange(start, start + (lines[line - 1] || "").length);
    const lh = parseFloat(getComputedStyle(textarea).lineHeight) || 18;
    textarea.scrollTop = Math.max(0, (line - 4) * lh);
  }

  // The model file of a succeeded job (its selected pass), fetched with the bearer header
  // (never a token in a URL) and handed to the browser as a download.
  async function downloadModel(jobId) {
    const token = await ensureToken();
    const r = await fetch(`${ROOT}/v1/jobs/${enc(jobId)}/model`, { headers: { Authorization: `Bearer ${token}` } });
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(`${r.status}: ${detail}`);
    }
    const blob = await r.blob();
    const m = (r.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: m ? m[1] : `rectrain-${jobId}.pt`, hidden: true });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  // "Continue on new days": the job's spec warm-started from it (training.init_from), every
  // day list moved past the days it trained on.
  function continueSpec(src) {
    const spec = JSON.parse(JSON.stringify(src.spec || {}));
    const data = spec.data || (spec.data = {});
    const train = data.train_days || [0];
    const shift = Math.max(...train) - Math.min(...train) + 1;
    for (const k of ["train_days", "validation_days", "test_days"]) {
      if (Array.isArray(data[k])) data[k] = data[k].map((d) => d + shift);
    }
    const training = spec.training || (spec.training = {});
    training.init_from = { job: src.id, reset_optimizer: false };
    return spec;
  }

  async function pageSubmit() {
    const params = new URLSearchParams(location.search);
    const nameIn = h("input", { id: "job-name", name: "name", placeholder: "optional, e.g. l2-1e-4", style: "width:100%" });
    const labelsIn = h("input", { id: "job-labels", name: "labels", placeholder: "optional, e.g. team=ranking, sweep=l2", style: "width:100%" });
    const specIn = h("textarea", { id: "job-spec", name: "spec", class: "code", spellcheck: "false" });
    const errName = h("div", { class: "field-error", id: "err-name" });
    const errLabels = h("div", { class: "field-error", id: "err-labels" });
    const errSpec = h("div", { class: "field-error", id: "err-spec", role: "alert" });
    const errForm = h("div", { class: "field-error", id: "err-form", role: "alert" });
    const submitBtn = h("button", { type: "submit", id: "submit-job" }, "Submit job");
    const resetBtn = h("button", { type: "button", class: "ghost" }, "Reset to example");
    const form = h("form", { id: "submit-form", novalidate: true },
      h("div", { class: "grid2" },
        h("div", {}, h("label", { for: "job-name" }, "Name"), nameIn, errName),
        h("div", {}, h("label", { for: "job-labels" }, "Labels (key=value, comma separated)"), labelsIn, errLabels)),
      h("label", { for: "job-spec" }, "Spec (YAML or JSON)"), specIn, errSpec,
      h("div", { class: "row", style: "margin-top:10px" }, submitBtn, resetBtn,
        h("span", { class: "muted" }, "The API checks the spec: unknown fields, out-of-range values and models too big for the workers are refused.")),
      errForm);
    main.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, "Submit a job")), h("div", { class: "panel" }, form));

    async function loadExample() {
      try {
        const r = await fetch(`${ROOT}/ui/example-spec`);
        specIn.value = r.ok ? await r.text() : "";
      } catch (e) { specIn.value = ""; }
    }
    resetBtn.addEventListener("click", loadExample);
    if (params.get("from")) {
      try {
        const src = await api(`/v1/jobs/${enc(params.get("from"))}`);
        const cont = params.get("continue") === "1";
        specIn.value = jsyaml.dump(cont ? continueSpec(src) : src.spec || {}, { lineWidth: 100 });
        nameIn.value = src.name ? `${src.name}-${cont ? "next" : "2"}` : "";
        if (src.labels) labelsIn.value = Object.entries(src.labels).map(([k, v]) => `${k}=${v}`).join(", ");
      } catch (ex) { await loadExample(); errForm.textContent = `could not load job ${params.get("from")}: ${ex.message}`; }
    } else {
      await loadExample();
    }

    function clearErrors() {
      for (const el of [errName, errLabels, errSpec, errForm]) el.replaceChildren();
      for (const el of [nameIn, labelsIn, specIn]) el.classList.remove("invalid");
    }

    function showSpecErrors(items) {
      specIn.classList.add("invalid");
      errSpec.replaceChildren(h("ul", { class: "errors" }, items.map(({ path, msg }) => {
        const line = path && path.length ? lineOfPath(specIn.value, path) : null;
        return h("li", {},
          path && path.length ? h("code", {}, path.join(".")) : null, path && path.length ? ": " : null, msg,
          line ? h("a", { href: "#", class: "muted", onclick: (e) => { e.preventDefault(); selectLine(specIn, line); } }, ` (line ${line})`) : null);
      })));
    }

    function showApiErrors(status, body) {
      const detail = body && body.detail;
      if (typeof detail === "string" || !Array.isArray(detail)) {
        const msg = typeof detail === "string" ? detail : JSON.stringify(body);
        if (status === 422 || status === 400) showSpecErrors([{ path: null, msg }]);
        else errForm.textContent = `HTTP ${status}: ${msg}`;
        return;
      }
      const spec = [], name = [], labels = [], other = [];
      for (const d of detail) {
        let loc = Array.isArray(d.loc) ? d.loc.slice() : [];
        if (loc[0] === "body") loc = loc.slice(1);
        const msg = d.msg || JSON.stringify(d);
        if (loc[0] === "spec") spec.push({ path: loc.slice(1), msg });
        else if (loc[0] === "name") name.push(msg);
        else if (loc[0] === "labels") labels.push(`${loc.slice(1).join(".")} ${msg}`.trim());
        else if (!loc.length) spec.push({ path: null, msg });
        else other.push(`${loc.join(".")}: ${msg}`);
      }
      if (spec.length) showSpecErrors(spec);
      if (name.length) { nameIn.classList.add("invalid"); errName.textContent = name.join("\n"); }
      if (labels.length) { labelsIn.classList.add("invalid"); errLabels.textContent = labels.join("\n"); }
      if (other.length) errForm.textContent = other.join("\n");
    }

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      clearErrors();
      let spec, ok = true;
      try {
        spec = jsyaml.load(specIn.value);
        if (spec == null || typeof spec !== "object" || Array.isArray(spec)) throw new Error("the spec must be a mapping (YAML keys or a JSON object)");
      } catch (ex) {
        showSpecErrors([{ path: null, msg: `cannot parse: ${ex.message}` }]);
        ok = false;
      }
      const labels = {};
      for (const part of labelsIn.value.split(",").map((s) => s.trim()).filter(Boolean)) {
        const i = part.indexOf("=");
        if (i <= 0) { labelsIn.classList.add("invalid"); errLabels.textContent = `"${part}" is not key=value`; ok = false; continue; }
        labels[part.slice(0, i).trim()] = part.slice(i + 1).trim();
      }
      if (!ok) return;
      submitBtn.disabled = true;
      try {
        const job = await api("/v1/jobs", { method: "POST", json: { spec, name: nameIn.value.trim() || null, labels } });
        location.href = `${ROOT}/ui/jobs/${enc(job.id)}`;
      } catch (ex) {
        if (ex instanceof ApiError) showApiErrors(ex.status, ex.body);
        else errForm.textContent = `Could not submit: ${ex.message}`;
        submitBtn.disabled = false;
      }
    });
  }

  // ------------------------------------------------------------------ router

  // Pages defined in other files (studies.js) register {name, nav, title, match(path) ->
  // arg or null, render(arg, ui)} in window.RectrainPages; they get these helpers.
  const UI = {
    ROOT, h, api, ApiError, enc, isNum, fmtNE, fmt3, fmtDelta, fmtTime, fmtDuration, statusBadge,
    every, getToken, Chart, PALETTE, main, regularizerSummary, lineOfPath, selectLine, ACTIVE, TERMINAL,
  };

  async function route() {
    clearTimers();
    let path = location.pathname;
    if (ROOT && path.startsWith(ROOT)) path = path.slice(ROOT.length);
    path = path.replace(/\/+$/, "") || "/";
    let page = "jobs", arg = null, extra = null;
    const mJob = /^\/ui\/jobs\/([^/]+)$/.exec(path);
    if (mJob) { page = "job"; arg = decodeURIComponent(mJob[1]); }
    else if (path === "/ui/compare") page = "compare";
    else if (path === "/ui/submit") page = "submit";
    else {
      for (const p of window.RectrainPages || []) {
        const a = p.match(path);
        if (a !== null && a !== undefined) { extra = p; page = p.name; arg = a; break; }
      }
    }
    document.body.dataset.page = page;
    const nav = extra ? extra.nav : page === "job" ? "jobs" : page;
    for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === nav);
    document.title = (extra ? extra.title : { jobs: "Jobs", job: "Job", compare: "Compare", submit: "Submit" }[page]) + " · rectrain";
    await ensureToken();
    try {
      if (extra) await extra.render(arg, UI);
      else if (page === "job") await pageJob(arg);
      else if (page === "compare") await pageCompare();
      else if (page === "submit") await pageSubmit();
      else await pageJobs();
    } finally {
      document.body.dataset.ready = "1";
    }
  }

  route().catch((ex) => {
    main.replaceChildren(h("div", { class: "panel" }, h("p", { class: "error" }, `dashboard error: ${ex.message}`)));
    document.body.dataset.ready = "1";
  });
})();
