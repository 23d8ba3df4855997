// Small SVG line charts: one chart per metric, one line per run, x = step.
// No dependencies. A chart is re-rendered from its series whenever data or visibility change;
// building the path strings is cheap next to the network, and it keeps the code stateless.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

// A compact label for a tick or a value: 4 significant digits, exponent for tiny/huge numbers.
function formatNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a < 1e-3 || a >= 1e6) {
    const [mantissa, exp] = v.toExponential(2).split("e");
    return `${Number(mantissa)}e${exp.replace("+", "")}`;
  }
  return String(Number(v.toPrecision(4)));
}

// About `count` round tick values (1, 2 or 5 times a power of ten) covering [lo, hi].
function niceTicks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  // Round to the nearest of 1, 2, 5, 10 (geometric midpoints), so the count stays near `count`.
  const r = raw / mag;
  const step = (r >= 7.1 ? 10 : r >= 3.2 ? 5 : r >= 1.4 ? 2 : 1) * mag;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push(Math.abs(t) < step * 1e-9 ? 0 : Number(t.toPrecision(12)));
  }
  return ticks;
}

// One metric's points for one run, kept sorted by step. A step logged twice keeps the later
// value (a chunk-end evaluation after a user one), as the stores' results frame does.
class Series {
  constructor() {
    this.steps = [];
    this.values = [];
  }

  add(step, value) {
    const n = this.steps.length;
    if (n === 0 || step > this.steps[n - 1]) {
      this.steps.push(step);
      this.values.push(value);
      return;
    }
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.steps[mid] < step) lo = mid + 1;
      else hi = mid;
    }
    if (this.steps[lo] === step) this.values[lo] = value;
    else {
      this.steps.splice(lo, 0, step);
      this.values.splice(lo, 0, value);
    }
  }

  // The value at the step nearest to `step` (for the hover read-out), or null.
  near(step) {
    if (this.steps.length === 0) return null;
    let best = 0;
    for (let i = 1; i < this.steps.length; i++) {
      if (Math.abs(this.steps[i] - step) < Math.abs(this.steps[best] - step)) best = i;
    }
    return { step: this.steps[best], value: this.values[best] };
  }
}

// A chart of one metric. `lines` is a Map run id -> Series; `style(runId)` gives
// {color, label, hidden} so visibility and colours stay owned by the page.
class LineChart {
  constructor(container, title, style) {
    this.title = title;
    this.style = style;
    this.lines = new Map();
    this.height = 210;
    this.margin = { left: 54, right: 14, top: 12, bottom: 30 };
    this.card = document.createElement("div");
    this.card.className = "chart-card";
    this.card.dataset.metric = title;
    const head = document.createElement("div");
    head.className = "chart-title";
    head.textContent = title;
    this.readout = document.createElement("div");
    this.readout.className = "chart-readout";
    this.svg = svgEl("svg", { class: "chart", role: "img", "aria-label": `${title} by step` });
    this.card.append(head, this.svg, this.readout);
    container.appendChild(this.card);
    this.hoverX = null; // the pointer's clientX while it is over the chart
    this.svg.addEventListener("mousemove", (ev) => {
      this.hoverX = ev.clientX;
      this.hover();
    });
    this.svg.addEventListener("mouseleave", () => {
      this.hoverX = null;
      this.unhover();
    });
  }

  series(runId) {
    if (!this.lines.has(runId)) this.lines.set(runId, new Series());
    return this.lines.get(runId);
  }

  visible() {
    return [...this.lines.entries()].filter(([id, s]) => s.steps.length && !this.style(id).hidden);
  }

  // Data extent over the visible runs; y padded so lines do not touch the frame.
  extent(visible) {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const [, s] of visible) {
      x0 = Math.min(x0, s.steps[0]);
      x1 = Math.max(x1, s.steps[s.steps.length - 1]);
      for (const v of s.values) {
        if (v === null) continue;
        y0 = Math.min(y0, v);
        y1 = Math.max(y1, v);
      }
    }
    if (!Number.isFinite(x0)) return null;
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (!Number.isFinite(y0)) { y0 = 0; y1 = 1; }
    const pad = y1 > y0 ? (y1 - y0) * 0.06 : Math.abs(y0) * 0.1 || 1;
    return { x0, x1, y0: y0 - pad, y1: y1 + pad };
  }

  render() {
    const width = Math.max(240, this.card.clientWidth - 2);
    const { left, right, top, bottom } = this.margin;
    const plotW = width - left - right;
    const plotH = this.height - top - bottom;
    this.svg.setAttribute("viewBox", `0 0 ${width} ${this.height}`);
    this.svg.setAttribute("width", width);
    this.svg.setAttribute("height", this.height);
    this.svg.replaceChildren();
    const visible = this.visible();
    const ext = this.extent(visible);
    this.geometry = null;
    if (!ext) {
      const msg = svgEl("text", { x: width / 2, y: this.height / 2, class: "chart-empty" });
      msg.textContent = "no visible runs";
      this.svg.appendChild(msg);
      return;
    }
    const sx = (x) => left + ((x - ext.x0) / (ext.x1 - ext.x0)) * plotW;
    const sy = (y) => top + (1 - (y - ext.y0) / (ext.y1 - ext.y0)) * plotH;
    this.geometry = { sx, sy, ext, left, plotW, top, plotH };

    const grid = svgEl("g", { class: "chart-grid" });
    for (const t of niceTicks(ext.y0, ext.y1, 4)) {
      const y = sy(t);
      grid.appendChild(svgEl("line", { x1: left, x2: left + plotW, y1: y, y2: y }));
      const label = svgEl("text", { x: left - 8, y: y + 4, class: "tick tick-y" });
      label.textContent = formatNumber(t);
      grid.appendChild(label);
    }
    const xTicks = niceTicks(ext.x0, ext.x1, Math.max(2, Math.floor(plotW / 80))).filter(
      (t) => Number.isInteger(t) && t >= ext.x0 && t <= ext.x1,
    );
    for (const t of xTicks) {
      const x = sx(t);
      grid.appendChild(svgEl("line", { x1: x, x2: x, y1: top + plotH, y2: top + plotH + 4 }));
      const label = svgEl("text", { x, y: top + plotH + 18, class: "tick tick-x" });
      label.textContent = String(t);
      grid.appendChild(label);
    }
    grid.appendChild(svgEl("rect", { x: left, y: top, width: plotW, height: plotH, class: "chart-frame" }));
    const xName = svgEl("text", { x: left + plotW, y: this.height - 2, class: "axis-name" });
    xName.textContent = "step";
    grid.appendChild(xName);
    this.svg.appendChild(grid);

    const lines = svgEl("g", { class: "chart-lines" });
    for (const [id, s] of visible) {
      const { color } = this.style(id);
      let d = "";
      let pen = false;
      for (let i = 0; i < s.steps.length; i++) {
        const v = s.values[i];
        if (v === null) { pen = false; continue; } // a NaN breaks the line
        d += `${pen ? "L" : "M"}${sx(s.steps[i]).toFixed(1)} ${sy(v).toFixed(1)}`;
        pen = true;
      }
      lines.appendChild(svgEl("path", { d, stroke: color, class: "line", "data-run": id }));
      // Sparse series (evaluations, a single point) also get dots, else they are hard to see.
      if (s.steps.length <= 40) {
        for (let i = 0; i < s.steps.length; i++) {
          if (s.values[i] === null) continue;
          lines.appendChild(svgEl("circle", {
            cx: sx(s.steps[i]).toFixed(1), cy: sy(s.values[i]).toFixed(1), r: 2.6, fill: color, class: "dot",
          }));
        }
      }
    }
    this.svg.appendChild(lines);
    this.cursor = svgEl("line", { class: "chart-cursor", y1: top, y2: top + plotH, visibility: "hidden" });
    this.svg.appendChild(this.cursor);
    if (this.hoverX !== null) this.hover(); // new data arrived under the pointer: keep the read-out
  }

  hover() {
    if (!this.geometry || this.hoverX === null) return;
    const { ext, left, plotW, sx } = this.geometry;
    const rect = this.svg.getBoundingClientRect();
    const px = ((this.hoverX - rect.left) / rect.width) * this.svg.viewBox.baseVal.width;
    const step = ext.x0 + ((px - left) / plotW) * (ext.x1 - ext.x0);
    const rows = [];
    let at = null;
    for (const [id, s] of this.visible()) {
      const p = s.near(step);
      if (!p) continue;
      if (at === null || Math.abs(p.step - step) < Math.abs(at - step)) at = p.step;
      rows.push({ id, ...p });
    }
    if (at === null) return this.unhover();
    this.cursor.setAttribute("x1", sx(at));
    this.cursor.setAttribute("x2", sx(at));
    this.cursor.setAttribute("visibility", "visible");
    this.readout.replaceChildren();
    const head = document.createElement("span");
    head.className = "readout-step";
    head.textContent = `step ${at}`;
    this.readout.appendChild(head);
    for (const r of rows.filter((r) => r.step === at)) {
      const item = document.createElement("span");
      item.className = "readout-item";
      const sw = document.createElement("i");
      sw.style.background = this.style(r.id).color;
      item.append(sw, `${this.style(r.id).label} ${formatNumber(r.value)}`);
      this.readout.appendChild(item);
    }
    this.readout.classList.add("shown");
  }

  unhover() {
    if (this.cursor) this.cursor.setAttribute("visibility", "hidden");
    this.readout.classList.remove("shown");
  }
}

window.RFCharts = { LineChart, formatNumber, niceTicks };
