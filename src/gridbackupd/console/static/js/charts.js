// Small SVG plots drawn by the page itself: a line chart over time and a
// bar chart with one bar per item.  Colours come from console.css classes.

import {h, s} from "./dom.js";

const M = {left: 70, right: 14, top: 12, bottom: 26};

/** A round top for an axis whose quarters are round too; ``base`` 1024 for bytes. */
function niceMax(v, base = 1000) {
  if (!(v > 0)) return 1;
  const unit = base === 1024 ? Math.pow(1024, Math.max(0, Math.floor(Math.log(v) / Math.log(1024)))) : 1;
  const x = v / unit;
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 4, 8, 10]) if (m * p >= x) return m * p * unit;
  return 10 * p * unit;
}

function frame(width, height, ymax, yFormat, label) {
  const svg = s("svg", {
    class: "chart", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": label,
  });
  const plotH = height - M.top - M.bottom;
  for (let i = 0; i <= 4; i++) {
    const y = M.top + plotH - (plotH * i) / 4;
    svg.append(s("line", {class: "grid", x1: M.left, x2: width - M.right, y1: y, y2: y}));
    svg.append(s("text", {class: "tick", x: M.left - 6, y: y + 4, "text-anchor": "end"}, yFormat((ymax * i) / 4)));
  }
  return svg;
}

function legend(series) {
  return h("div", {class: "legend"},
    series.map((x) => h("span", {}, h("i", {class: `swatch ${x.cls}`}), x.label)));
}

/**
 * Lines over a shared x axis: ``series`` is [{label, cls, points: [[x, y], ...]}].
 * Returns a figure element (the SVG and its legend).
 */
export function lineChart({width, height = 190, series, yFormat, xFormat, label, empty, base}) {
  width = Math.max(260, Math.floor(width));
  const pts = series.flatMap((x) => x.points);
  if (pts.length < 2) return h("figure", {class: "plot"}, h("p", {class: "muted"}, empty || "Not enough data yet."));
  const xmin = Math.min(...pts.map((p) => p[0])), xmax = Math.max(...pts.map((p) => p[0]));
  const ymax = niceMax(Math.max(...pts.map((p) => p[1])), base);
  const svg = frame(width, height, ymax, yFormat, label);
  const plotW = width - M.left - M.right, plotH = height - M.top - M.bottom;
  const X = (x) => M.left + (xmax === xmin ? plotW : ((x - xmin) / (xmax - xmin)) * plotW);
  const Y = (y) => M.top + plotH - (y / ymax) * plotH;
  for (const x of [xmin, (xmin + xmax) / 2, xmax]) {
    const anchor = x === xmin ? "start" : x === xmax ? "end" : "middle";
    svg.append(s("text", {class: "tick", x: X(x), y: height - 8, "text-anchor": anchor}, xFormat(x)));
  }
  for (const x of series) {
    if (!x.points.length) continue;
    const d = x.points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
    svg.append(s("path", {class: `line ${x.cls}`, d}));
    const last = x.points[x.points.length - 1];
    svg.append(s("circle", {class: `dot ${x.cls}`, cx: X(last[0]), cy: Y(last[1]), r: 3},
      s("title", {}, `${x.label}: ${yFormat(last[1])}`)));
  }
  return h("figure", {class: "plot"}, svg, legend(series));
}

/**
 * One bar per item: ``items`` is [{label, value, title, onclick}], drawn
 * left (oldest) to right.
 */
export function barChart({width, height = 170, items, cls, yFormat, label, empty, base}) {
  width = Math.max(260, Math.floor(width));
  if (!items.length) return h("figure", {class: "plot"}, h("p", {class: "muted"}, empty || "Nothing yet."));
  const ymax = niceMax(Math.max(...items.map((x) => x.value)), base);
  const svg = frame(width, height, ymax, yFormat, label);
  const plotW = width - M.left - M.right, plotH = height - M.top - M.bottom;
  const step = plotW / items.length;
  const barW = Math.max(1, Math.min(40, step * 0.7));
  items.forEach((item, i) => {
    const barH = Math.max(item.value > 0 ? 1 : 0, (item.value / ymax) * plotH);
    const rect = s("rect", {
      class: `bar ${cls}`, x: (M.left + i * step + (step - barW) / 2).toFixed(1),
      y: (M.top + plotH - barH).toFixed(1), width: barW.toFixed(1), height: barH.toFixed(1),
    }, s("title", {}, item.title));
    if (item.onclick) {
      rect.classList.add("clickable");
      rect.addEventListener("click", item.onclick);
    }
    svg.append(rect);
  });
  const first = items[0].label, last = items[items.length - 1].label;
  svg.append(s("text", {class: "tick", x: M.left, y: height - 8, "text-anchor": "start"}, first));
  if (items.length > 1) svg.append(s("text", {class: "tick", x: width - M.right, y: height - 8, "text-anchor": "end"}, last));
  return h("figure", {class: "plot"}, svg);
}
