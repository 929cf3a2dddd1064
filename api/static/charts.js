/* rectrain dashboard: a small wrapper over uPlot for the NE charts.
 *
 * new RectrainCharts.Chart(parent, {
 *   id, title, xLabel, yLabel, xKind: "step" | "pass", yFormat: "ne" | "rate" | "ratio",
 *   series: [{label, color?, dash?}], minSpan, includeY, refLines: [{y, label}],
 * })
 * chart.setData([xs, ys1, ys2, ...], markers)   // markers: [{x, label}] vertical lines
 *
 * The chart box carries data-points (count of non-null y values) so tests can see it grow.
 */
(function () {
  "use strict";

  // Colour-blind-friendly categorical palette (Tableau 10), readable on light and dark.
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1",
                   "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#bab0ac"];
  const live = new Set();

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  const FORMATS = {
    ne: (v) => v.toFixed(4),
    ratio: (v) => v.toFixed(3),
    rate: (v) => {
      const a = Math.abs(v);
      if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
      if (a >= 1e3) return (v / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
      return v.toFixed(0);
    },
  };

  // NE moves in the 3rd decimal late in training and by tenths early on: pad the data
  // range, but never zoom in below minSpan so that noise is not blown up into cliffs.
  function yRange(minSpan, includeY) {
    return (u, min, max) => {
      if (min == null || max == null || !isFinite(min) || !isFinite(max)) {
        return includeY != null ? [includeY - minSpan / 2, includeY + minSpan / 2] : [0, 1];
      }
      if (includeY != null) { min = Math.min(min, includeY); max = Math.max(max, includeY); }
      let span = max - min;
      if (span < minSpan) {
        const mid = (max + min) / 2;
        min = mid - minSpan / 2; max = mid + minSpan / 2; span = minSpan;
      }
      return [min - span * 0.08, max + span * 0.08];
    };
  }

  function passRange(u, min, max) {
    if (min == null || !isFinite(min)) return [0.5, 3.5];
    if (max <= min) return [min - 0.5, min + 0.5];
    return [min - 0.3, max + 0.3];
  }

  class Chart {
    constructor(parent, opts) {
      this.opts = Object.assign({ xKind: "step", yFormat: "ne", minSpan: 0.02, height: 270 }, opts);
      this.data = [[]].concat(this.opts.series.map(() => []));
      this.markers = [];
      this.box = document.createElement("div");
      this.box.className = "chart-box";
      if (opts.id) this.box.id = opts.id;
      this.box.dataset.points = "0";
      this.emptyEl = document.createElement("div");
      this.emptyEl.className = "empty";
      this.emptyEl.textContent = opts.emptyText || "waiting for data…";
      this.box.appendChild(this.emptyEl);
      parent.appendChild(this.box);
      this.plot = null;
      this.build();
      this.ro = new ResizeObserver(() => this.resize());
      this.ro.observe(this.box);
      live.add(this);
    }

    width() { return Math.max(280, this.box.clientWidth - 20); }

    resize() {
      if (!this.plot) return;
      const w = this.width();
      if (Math.abs(w - this.plot.width) > 2) this.plot.setSize({ width: w, height: this.opts.height });
    }

    build() {
      if (this.plot) { this.plot.destroy(); this.plot = null; }
      const o = this.opts;
      const fg = cssVar("--fg") || "#222", muted = cssVar("--muted") || "#666", grid = cssVar("--grid") || "#ddd";
      const fmt = FORMATS[o.yFormat] || FORMATS.ne;
      const isPass = o.xKind === "pass";
      const axisX = {
        label: o.xLabel, stroke: muted, labelFont: "600 12px system-ui, sans-serif",
        font: "12px system-ui, sans-serif",
        grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 },
        values: isPass
          ? (u, vals) => vals.map((v) => (Number.isInteger(v) ? String(v) : ""))
          : (u, vals) => vals.map((v) => (v == null ? "" : Number(v).toLocaleString("en-US"))),
      };
      if (isPass) axisX.incrs = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
      const axisY = {
        label: o.yLabel, stroke: muted, labelFont: "600 12px system-ui, sans-serif",
        font: "12px system-ui, sans-serif", size: 62,
        grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 },
        values: (u, vals) => vals.map((v) => (v == null ? "" : fmt(v))),
      };
      const series = [{ label: o.xLabel, value: (u, v) => (v == null ? "–" : isPass ? String(v) : Number(v).toLocaleString("en-US")) }];
      o.series.forEach((s, i) => {
        series.push({
          label: s.label,
          stroke: s.color || PALETTE[i % PALETTE.length],
          width: s.width || 2,
          dash: s.dash,
          spanGaps: !!s.spanGaps,
          points: { show: isPass || !!s.points, size: isPass ? 7 : 4 },
          value: (u, v) => (v == null ? "–" : fmt(v)),
        });
      });
      const self = this;
      const opts = {
        title: o.title,
        width: this.width(),
        height: o.height,
        scales: {
          x: { time: false, range: isPass ? passRange : undefined },
          y: { range: yRange(o.minSpan, o.includeY) },
        },
        axes: [axisX, axisY],
        series,
        legend: { show: true, live: true },
        cursor: { drag: { x: true, y: false } },
        hooks: { draw: [(u) => self.drawOverlays(u, fg, muted)] },
      };
      this.plot = new uPlot(opts, this.data, this.box);
    }

    drawOverlays(u, fg, muted) {
      const ctx = u.ctx, r = uPlot.pxRatio || 1, b = u.bbox;
      ctx.save();
      ctx.beginPath();
      ctx.rect(b.left, b.top, b.width, b.height);
      ctx.clip();
      ctx.font = `${11 * r}px system-ui, sans-serif`;
      ctx.textAlign = "left";
      ctx.textBaseline = "alphabetic";
      ctx.setLineDash([4 * r, 4 * r]);
      ctx.lineWidth = 1 * r;
      ctx.strokeStyle = muted;
      ctx.fillStyle = muted;
      for (const m of this.markers) {
        const x = u.valToPos(m.x, "x", true);
        if (x < b.left || x > b.left + b.width) continue;
        ctx.beginPath(); ctx.moveTo(x, b.top); ctx.lineTo(x, b.top + b.height); ctx.stroke();
        if (m.label) {
          const w = ctx.measureText(m.label).width;
          const right = x + 4 * r + w > b.left + b.width;  // keep the label inside the plot
          ctx.textAlign = right ? "right" : "left";
          ctx.fillText(m.label, right ? x - 4 * r : x + 4 * r, b.top + 12 * r);
          ctx.textAlign = "left";
        }
      }
      for (const ref of this.opts.refLines || []) {
        const y = u.valToPos(ref.y, "y", true);
        if (y < b.top || y > b.top + b.height) continue;
        ctx.beginPath(); ctx.moveTo(b.left, y); ctx.lineTo(b.left + b.width, y); ctx.stroke();
        if (ref.label) ctx.fillText(ref.label, b.left + 6 * r, y - 4 * r);
      }
      ctx.restore();
    }

    setData(data, markers) {
      this.data = data;
      this.markers = markers || [];
      let n = 0;
      for (let i = 1; i < data.length; i++) for (const v of data[i]) if (v != null) n++;
      this.box.dataset.points = String(n);
      this.box.classList.toggle("has-data", n > 0);
      if (this.plot) this.plot.setData(data);
    }

    setSeries(series) {  // e.g. the compare chart, whose series are the chosen jobs
      this.opts.series = series;
      this.data = [[]].concat(series.map(() => []));
      this.build();
    }

    destroy() {
      live.delete(this);
      if (this.ro) this.ro.disconnect();
      if (this.plot) this.plot.destroy();
      this.box.remove();
    }
  }

  function rebuildAll() {
    for (const c of live) { const d = c.data; c.build(); c.setData(d, c.markers); }
  }

  window.RectrainCharts = { Chart, PALETTE, rebuildAll };
})();
