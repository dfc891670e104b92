// The overview: protected or not at a glance, what runs, the backlog, the
// grid, problems and maintenance, updated by polling GET /v1/status.

import * as api from "./api.js";
import {facts, fill, h, notice, table} from "./dom.js";
import * as fmt from "./format.js";
import {lineChart} from "./charts.js";
import {actionButton, card, genericFacts, progress, stateBadge, value} from "./widgets.js";

const STATUS_EVERY = 3000;
const SERIES_EVERY = 60000;
const KNOWN = new Set(["console", "warnings", "state", "recovery", "scan", "upload", "last_snapshot", "maintenance", "api", "grid"]);
export const DEFAULT_THRESHOLDS = {amber: 86400, red: 3 * 86400};

/**
 * The age limits for green/amber/red: the daemon's (``console`` in its
 * status: [api] console_amber_after and console_red_after), else one day
 * and three days.
 */
export function thresholds(status) {
  const t = status && status.console;
  if (t && t.amber_after > 0 && t.red_after > 0) return {amber: t.amber_after, red: t.red_after};
  return {...DEFAULT_THRESHOLDS};
}

/** Green, amber or red, with the words for the banner. */
export function protection(status) {
  const last = status.last_snapshot;
  const t = thresholds(status);
  if (status.state === "error") return {level: "red", title: "Not protected", why: "the daemon stopped with an error"};
  if (!last) return {level: "red", title: "Not protected", why: "no complete backup yet"};
  const asOf = status.protected_as_of;
  const age = typeof asOf === "number" ? Math.max(0, Date.now() / 1000 - asOf) : last.age_seconds;
  if (age >= t.red) return {level: "red", title: "Not protected", why: `the newest complete backup is ${fmt.duration(age)} old`, age};
  if (age >= t.amber) return {level: "amber", title: "Protected, getting old", why: `the newest complete backup is ${fmt.duration(age)} old`, age};
  return {level: "green", title: "Protected", why: `the newest complete backup is ${fmt.duration(age)} old`, age};
}

function problems(st) {
  const out = [];
  const up = st.upload || {};
  if (st.state !== "ready") out.push(["warn", `Daemon state: ${st.state}`]);
  if (st.scan && st.scan.last_error) out.push(["error", `Last scan failed: ${st.scan.last_error}`]);
  if (up.stalled) out.push(["error", `Uploads stalled since ${fmt.time(up.stalled.since)}: ${up.stalled.reason}`]);
  if (up.last_error) {
    const retry = up.retry_at ? ` (next try ${fmt.time(up.retry_at)})` : "";
    out.push(["error", `Uploads failing (${up.consecutive_failures || 0} in a row): ${up.last_error}${retry}`]);
  }
  if (up.writer_lock) out.push(["warn", `Writer lock: ${value("", up.writer_lock)}`]);
  if (st.grid && st.grid.error) out.push(["error", `Grid: ${st.grid.error}`]);
  if (st.grid && st.grid.last_node_exit) out.push(["warn", `A grid node exited: ${st.grid.last_node_exit}`]);
  if (st.api && st.api.tcp_error) out.push(["warn", `API listener: ${st.api.tcp_error}`]);
  if (st.api && st.api.socket_error) out.push(["warn", `API socket: ${st.api.socket_error}`]);
  for (const w of st.warnings || []) out.push(["warn", w]);
  for (const [kind, m] of Object.entries(st.maintenance || {})) {
    if (m.last && m.last.state === "failed") out.push(["error", `Last ${kind} job failed: ${m.last.error || "no reason given"}`]);
  }
  return out;
}

function banner(st, ctx) {
  const p = protection(st);
  const last = st.last_snapshot;
  const up = st.upload || {};
  const out = h("span", {class: "action-out"});
  const paused = up.paused;
  return h("section", {id: "protection", class: `banner ${p.level}`, dataset: {level: p.level}},
    h("div", {class: "banner-main"},
      h("span", {class: `light ${p.level}`, "aria-hidden": "true"}),
      h("div", {},
        h("h1", {}, p.title),
        h("p", {}, p.why),
        last ? h("p", {class: "small"}, "Newest complete snapshot ",
          h("a", {href: `#/browse?snapshot=${encodeURIComponent(last.id)}`, class: "mono", id: "last-snapshot"}, last.id),
          ` · ${fmt.time(last.finished || last.time)} · ${fmt.count(last.files)} files · ${fmt.bytes(last.bytes)}`) : null,
        typeof st.protected_as_of === "number" ? h("p", {class: "small"}, `Protected as of ${fmt.time(st.protected_as_of)}`) : null)),
    h("div", {class: "banner-actions"},
      actionButton("Back up now", () => api.post("/v1/backups"), out,
        (r) => h("span", {}, "Started ", h("span", {class: "mono"}, r.id)), "primary"),
      actionButton(paused ? "Resume uploads" : "Pause uploads",
        () => api.post(paused ? "/v1/uploads/resume" : "/v1/uploads/pause"), out,
        () => h("span", {}, paused ? "Uploads resumed." : "Uploads paused.")),
      out));
}

// Where the uploaded-bytes counter stood when this backlog began (the
// counter counts since the daemon started): the bar shows this backlog only.
let backlogBase = null;

function uploadProgress(up) {
  if (!up.pending_bytes) { backlogBase = null; return null; }
  if (backlogBase === null || backlogBase > up.uploaded_bytes) backlogBase = up.uploaded_bytes;
  const done = up.uploaded_bytes - backlogBase;
  return [done, done + up.pending_bytes];
}

function running(st, restores) {
  const items = [];
  const scan = st.scan || {};
  if (scan.running) {
    items.push(h("div", {class: "run"}, h("h3", {}, "Scan ", scan.snapshot ? h("span", {class: "mono small"}, scan.snapshot) : null),
      h("p", {}, `${fmt.count(scan.entries)} entries, ${fmt.count(scan.files)} files, ${fmt.bytes(scan.bytes)}; ` +
        `${fmt.bytes(scan.bytes_hashed)} hashed; ${fmt.count(Math.round(scan.entries_per_second || 0))} entries/s` +
        (scan.errors ? `; ${fmt.count(scan.errors)} unreadable` : ""))));
  }
  const up = st.upload;
  const bar = up ? uploadProgress(up) : null;
  if (up && (up.pending_blobs || up.in_flight_blobs)) {
    const [done, total] = bar || [0, 0];
    items.push(h("div", {class: "run"}, h("h3", {}, up.paused ? "Upload (paused)" : "Upload"),
      progress(done, total,
        `${fmt.bytes(up.pending_bytes)} to go at ${fmt.rate(up.rate_bytes_per_second)}` +
        (up.eta_seconds != null ? `, about ${fmt.duration(up.eta_seconds)} left` : ""))));
  }
  for (const r of restores) {
    items.push(h("div", {class: "run"}, h("h3", {}, "Restore ", h("a", {class: "mono small", href: `#/restore?id=${encodeURIComponent(r.id)}`}, r.id)),
      progress(r.bytes_done, r.bytes_total, `${r.state}${r.waiting_for ? ` (waiting for the ${r.waiting_for})` : ""}: ` +
        `${fmt.count(r.files_done)} of ${fmt.count(r.files_total)} files, ${fmt.bytes(r.bytes_done)} of ${fmt.bytes(r.bytes_total)}`)));
  }
  for (const [kind, m] of Object.entries(st.maintenance || {})) {
    if (!m.running) continue;
    const pr = m.progress || {};
    items.push(h("div", {class: "run"}, h("h3", {}, `Maintenance: ${kind}`),
      pr.total ? progress(pr.done || 0, pr.total, `${fmt.count(pr.done || 0)} of ${fmt.count(pr.total)}`) : h("p", {}, "running")));
  }
  return card("Running", items.length ? items : h("p", {class: "muted"}, "Nothing is running."));
}

function backlog(st) {
  const up = st.upload;
  if (!up) return card("Upload backlog", h("p", {class: "muted"}, "Not known until the grid is connected."));
  return card("Upload backlog", facts([
    ["Pending", `${fmt.count(up.pending_blobs)} blobs, ${fmt.bytes(up.pending_bytes)}`],
    ["In flight", up.in_flight_blobs != null ? `${fmt.count(up.in_flight_blobs)} blobs` : null],
    ["Uploaded", `${fmt.bytes(up.uploaded_bytes)}${up.uploaded_packs != null ? ` in ${fmt.count(up.uploaded_packs)} packs` : ""}`],
    ["Rate", fmt.rate(up.rate_bytes_per_second)],
    ["ETA", up.eta_seconds != null ? fmt.duration(up.eta_seconds) : "–"],
    ["Uploads", up.paused ? `paused${up.paused_by ? ` by ${up.paused_by}` : ""}` : "running"],
    ["Failed packs", up.failed_packs ? fmt.count(up.failed_packs) : null],
    ["Schedule", up.schedule !== undefined ? value("schedule", up.schedule) : null],
  ]));
}

function grid(st) {
  const g = st.grid || {};
  const up = st.upload || {};
  const enough = g.servers_connected != null && g.servers_connected >= g.servers_needed;
  return card("Grid",
    h("p", {class: `big ${enough ? "ok" : "bad"}`}, `${g.servers_connected ?? "?"} of ${g.servers_needed} servers`),
    facts([
      ["Grid", g.embedded ? "embedded (on this machine)" : "external"],
      ["Off-site", g.offsite === true ? "yes" : g.offsite === false ? "no: every share is on this machine" : "cannot tell"],
      ["Node restarts", g.node_restarts ? fmt.count(g.node_restarts) : null],
      ["Writer lock", up.writer_lock ? value("", up.writer_lock) : "held by this daemon"],
    ]));
}

function maintenance(st) {
  const m = st.maintenance;
  if (!m) return card("Maintenance", h("p", {class: "muted"}, "Not known until the grid is connected."));
  const rows = Object.entries(m).map(([kind, job]) => h("tr", {},
    h("td", {}, kind),
    h("td", {class: "nowrap"}, job.running ? stateBadge("running") : job.last ? stateBadge(job.last.state) : h("span", {class: "muted"}, "never run")),
    h("td", {}, job.last ? `${fmt.ago(job.last.finished)}${job.last.error ? `: ${job.last.error}` : ""}` : "–"),
    h("td", {}, job.next_due ? fmt.time(job.next_due) : "not scheduled")));
  return h("section", {class: "card span2"}, h("h2", {}, "Maintenance"), table(["job", "state", "last run", "next due"], rows));
}

function problemsCard(st) {
  const list = problems(st);
  return card("Problems", list.length
    ? h("ul", {class: "problems"}, list.map(([kind, text]) => h("li", {class: kind}, text)))
    : h("p", {class: "ok"}, "None."));
}

function extras(st) {
  return Object.entries(st).filter(([k, v]) => !KNOWN.has(k) && k !== "protected_as_of" && v !== null)
    .map(([k, v]) => card(k.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase()), genericFacts(v)));
}

function thresholdsLine(st) {
  const t = thresholds(st);
  return h("p", {class: "muted small"}, `The newest complete backup's age turns amber after ${fmt.duration(t.amber)} and red after ` +
    `${fmt.duration(t.red)} ([api] console_amber_after and console_red_after in the daemon's configuration).`);
}

function seriesPlot(el, series) {
  const width = el.clientWidth || 600;
  if (!series) {
    fill(el, h("p", {class: "muted"}, "This daemon keeps no upload series (GET /v1/series)."));
    return;
  }
  const ups = series.uploads || [];
  const first = ups.length ? ups[0].uploaded_bytes : 0;
  fill(el, lineChart({
    width, label: "bytes uploaded and backlog over the last day",
    series: [
      {label: "uploaded (since the start of the plot)", cls: "s1", points: ups.map((u) => [u.time, u.uploaded_bytes - first])},
      {label: "backlog", cls: "s2", points: ups.map((u) => [u.time, u.backlog_bytes])},
    ],
    yFormat: fmt.bytesShort, base: 1024, xFormat: (t) => fmt.time(t).slice(11, 16),
    empty: "No samples yet: one is taken each minute.",
  }));
}

export function render(root, ctx) {
  const top = h("div", {id: "overview-top"});
  const grid1 = h("div", {class: "cards"});
  const grid2 = h("div", {class: "cards"});
  const plotBox = h("div", {class: "plot-box"});
  const plots = card("Uploaded and backlog, last 24 hours", plotBox);
  const thr = h("div");
  const error = h("div");
  root.append(error, top, grid1, plots, grid2, thr);
  let status = null, restores = [], series = null;

  function draw() {
    if (!status) return;
    fill(top, banner(status, ctx));
    fill(grid1, running(status, restores), problemsCard(status), backlog(status));
    fill(grid2, grid(status), maintenance(status), ...extras(status));
  }

  ctx.poll(async () => {
    try {
      status = await api.get("/v1/status");
      const all = await api.all("/v1/restores?limit=1000", "restores", 5000).catch(() => []);
      restores = all.filter((r) => r.state === "running" || r.state === "queued");
      fill(error);
      fill(thr, thresholdsLine(status));
      draw();
    } catch (e) {
      fill(error, notice("error", e.message));
      throw e;
    }
  }, STATUS_EVERY);

  ctx.poll(async () => {
    try {
      series = await api.get("/v1/series");
    } catch (e) {
      if (e.status !== 404) throw e;
      series = null;
    }
    seriesPlot(plotBox, series);
  }, SERIES_EVERY);

  ctx.onResize(() => seriesPlot(plotBox, series));
}
