// Small live charts in plain SVG: private vs shared bytes per VM, and events per second.

import { fmtSize } from "./format.js";

const NS = "http://www.w3.org/2000/svg";
export const SAMPLES = 120;  // one a second: the last two minutes

function svgEl(tag, attrs) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  return n;
}

/** A bounded series per key (VM id), sampled once a second. */
export class Series {
  constructor() { this.byKey = new Map(); }
  push(key, value) {
    const s = this.byKey.get(key) ?? [];
    s.push(value);
    if (s.length > SAMPLES) s.shift();
    this.byKey.set(key, s);
  }
  get(key) { return this.byKey.get(key) ?? []; }
  keep(keys) { for (const k of this.byKey.keys()) if (!keys.has(k)) this.byKey.delete(k); }
}

/** The series as a path, newest at the right edge, with a dot on the newest value. */
function line(values, max, w, h, cls) {
  const step = w / (SAMPLES - 1), x0 = w - (values.length - 1) * step, y = (v) => h - 2 - (v / max) * (h - 5);
  const g = svgEl("g", { class: `line ${cls}` });
  if (values.length > 1) g.append(svgEl("path", { d: values.map((v, i) => `${i ? "L" : "M"}${(x0 + i * step).toFixed(1)},${y(v).toFixed(1)}`).join("") }));
  if (values.length) g.append(svgEl("circle", { cx: w - 2, cy: y(values[values.length - 1]), r: 2 }));
  return g;
}

/** Private and shared bytes of one VM as two lines; the scale is the larger of the two. */
export function bytesChart(samples, label) {
  const w = 200, h = 34, svg = svgEl("svg", { viewBox: `0 0 ${w} ${h}`, class: "chart", role: "img", preserveAspectRatio: "none" });
  const max = Math.max(1, ...samples.flatMap((s) => [s.private, s.shared]));
  svg.append(svgEl("title", {}));
  svg.firstChild.textContent = `${label}: private and shared bytes, last ${SAMPLES} s (top = ${fmtSize(max)})`;
  svg.setAttribute("aria-label", svg.firstChild.textContent);
  svg.append(svgEl("line", { x1: 0, x2: w, y1: h - 0.5, y2: h - 0.5, class: "axis" }));
  svg.append(line(samples.map((s) => s.shared), max, w, h, "shared"), line(samples.map((s) => s.private), max, w, h, "private"));
  return svg;
}

/** Events per second as bars. */
export function rateChart(counts) {
  const w = 240, h = 36, max = Math.max(1, ...counts), bw = w / SAMPLES;
  const svg = svgEl("svg", { viewBox: `0 0 ${w} ${h}`, class: "chart", role: "img", preserveAspectRatio: "none",
    "aria-label": `events per second, last ${SAMPLES} s, peak ${max}` });
  svg.append(svgEl("line", { x1: 0, x2: w, y1: h - 0.5, y2: h - 0.5, class: "axis" }));
  counts.forEach((c, i) => {
    if (!c) return;
    const bh = Math.max(1, (c / max) * (h - 2));
    svg.append(svgEl("rect", { x: w - (counts.length - i) * bw, y: h - bh, width: Math.max(bw - 0.3, 0.5), height: bh, class: "bar" }));
  });
  return svg;
}
