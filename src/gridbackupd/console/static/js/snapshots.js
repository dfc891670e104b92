// The snapshots: their sizes and added bytes plotted, the list with
// figures, kind and state, and a diff between two of them.

import * as api from "./api.js";
import {button, fill, h, notice, table} from "./dom.js";
import * as fmt from "./format.js";
import {barChart} from "./charts.js";
import {badge, card, stateBadge} from "./widgets.js";

const PAGE = 50;
const PLOTTED = 60;
const DETAILS_AT_ONCE = 4;

/** Every snapshot, oldest first. */
export function listSnapshots() {
  return api.all("/v1/snapshots?limit=1000", "snapshots");
}

export function label(snap) {
  return `${fmt.time(snap.time)} · ${snap.id.slice(-8)}${snap.complete ? "" : ` (${snap.state})`}`;
}

/** Figures for ``snaps`` that the list did not carry, from each snapshot's own answer. */
async function fetchFigures(snaps, onEach) {
  const queue = snaps.filter((x) => x.figures === undefined);
  async function worker() {
    while (queue.length) {
      const snap = queue.shift();
      try {
        const detail = await api.get(`/v1/snapshots/${encodeURIComponent(snap.id)}`);
        snap.figures = detail.figures;
      } catch (e) {
        snap.figures = null;
      }
      onEach();
    }
  }
  await Promise.all(Array.from({length: DETAILS_AT_ONCE}, worker));
}

function figuresCell(f) {
  if (!f) return h("span", {class: "muted"}, "–");
  return h("span", {class: "figures"},
    h("span", {class: "added", title: "files added"}, `+${fmt.count(f.files_added)}`), " ",
    h("span", {class: "changed", title: "files changed"}, `~${fmt.count(f.files_changed)}`), " ",
    h("span", {class: "deleted", title: "files deleted"}, `−${fmt.count(f.files_deleted)}`));
}

function plots(el, snaps, ctx) {
  const width = Math.max(260, (el.clientWidth || 600) / (window.innerWidth > 900 ? 2 : 1) - 24);
  const shown = snaps.filter((x) => x.state !== "failed").slice(-PLOTTED);
  const open = (snap) => () => ctx.go("browse", {snapshot: snap.id});
  fill(el,
    h("div", {}, h("h3", {}, "Size of each snapshot"), barChart({
      width, cls: "s1", yFormat: fmt.bytesShort, base: 1024, label: "snapshot sizes",
      items: shown.map((x) => ({label: fmt.time(x.time).slice(5, 16), value: x.bytes, onclick: open(x),
        title: `${x.id}: ${fmt.bytes(x.bytes)}, ${fmt.count(x.files)} files`})),
    })),
    h("div", {}, h("h3", {}, "Bytes added by each snapshot"), barChart({
      width, cls: "s3", yFormat: fmt.bytesShort, base: 1024, label: "bytes added by each snapshot",
      items: shown.filter((x) => x.figures).map((x) => ({label: fmt.time(x.time).slice(5, 16), value: x.figures.bytes_added, onclick: open(x),
        title: `${x.id}: ${fmt.bytes(x.figures.bytes_added)} added, ${fmt.count(x.figures.files_added)} files added, ${fmt.count(x.figures.files_changed)} changed`})),
      empty: "Figures are loading…",
    })));
}

function snapshotRows(snaps, ctx) {
  return snaps.map((x) => h("tr", {},
    h("td", {class: "when"}, fmt.time(x.time)),
    h("td", {class: "mono small nowrap hide-narrow"}, x.id),
    h("td", {class: "hide-narrow"}, x.kind || "–"),
    h("td", {}, stateBadge(x.state)),
    h("td", {class: "num"}, fmt.count(x.files)),
    h("td", {class: "num"}, fmt.bytes(x.bytes)),
    h("td", {}, figuresCell(x.figures)),
    h("td", {class: "num nowrap hide-narrow"}, x.figures ? fmt.bytes(x.figures.bytes_added) : "–"),
    h("td", {class: "nowrap"},
      h("a", {href: `#/browse?snapshot=${encodeURIComponent(x.id)}`}, "Browse"), " · ",
      h("a", {href: `#/restore?snapshot=${encodeURIComponent(x.id)}`}, "Restore"))));
}

function diffForm(snaps, ctx, from, to) {
  const options = (selected) => snaps.slice().reverse().map((x) => h("option", {value: x.id, selected: x.id === selected}, label(x)));
  const a = h("select", {id: "diff-from", "aria-label": "from"}, options(from));
  const b = h("select", {id: "diff-to", "aria-label": "to"}, options(to));
  return h("form", {class: "inline", onsubmit: (e) => { e.preventDefault(); ctx.go("diff", {from: a.value, to: b.value}); }},
    h("label", {}, "From ", a), h("label", {}, "to ", b), h("button", {type: "submit"}, "Compare"));
}

function changeRow(c) {
  const mark = {added: ["+", "ok"], deleted: ["−", "bad"], changed: ["M", "warn"]}[c.change] || ["?", ""];
  const before = c.before || {};
  const sizes = c.change === "changed" && before.size !== undefined && before.size !== c.size
    ? `${fmt.bytes(before.size)} → ${fmt.bytes(c.size)}` : c.size !== undefined ? fmt.bytes(c.size) : "";
  return h("tr", {}, h("td", {}, badge(mark[0], mark[1])), h("td", {class: "path"}, fmt.shownPath(c)),
    h("td", {}, c.kind), h("td", {class: "num nowrap"}, sizes));
}

async function showDiff(el, from, to) {
  const tbody = h("tbody");
  const more = h("div");
  fill(el, h("div", {class: "table-wrap"}, h("table", {id: "diff-table"},
    h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "path"), h("th", {}, "kind"), h("th", {}, "size"))), tbody)), more);
  let cursor = null;
  async function page() {
    const q = fmt.query({from, to, limit: 500, cursor});
    const doc = await api.get(`/v1/diff${q}`);
    tbody.append(...doc.changes.map(changeRow));
    cursor = doc.next_cursor;
    if (!tbody.firstChild) tbody.append(h("tr", {}, h("td", {colspan: 4, class: "muted"}, "No changes.")));
    fill(more, cursor ? button("More changes", () => page().catch((e) => fill(more, notice("error", e.message)))) : null);
  }
  await page();
}

export function render(root, ctx) {
  const status = h("div", {}, h("p", {class: "muted"}, "Loading snapshots…"));
  root.append(status);
  (async () => {
    let snaps;
    try {
      snaps = await listSnapshots();
    } catch (e) {
      fill(status, notice("error", e.message));
      return;
    }
    if (!ctx.alive) return;
    fill(status);
    if (ctx.name === "diff") {
      const from = ctx.params.get("from"), to = ctx.params.get("to");
      const out = h("div", {}, h("p", {class: "muted"}, "Comparing…"));
      root.append(card("Compare two snapshots", diffForm(snaps, ctx, from, to), out));
      showDiff(out, from, to).catch((e) => fill(out, notice("error", e.message)));
      return;
    }
    const plotBox = h("div", {class: "plot-pair"});
    const tbody = h("tbody");
    const more = h("div");
    const newest = snaps.slice().reverse();
    root.append(
      card("Snapshots over time", plotBox),
      card(`Snapshots (${fmt.count(snaps.length)})`,
        h("div", {class: "table-wrap"}, h("table", {id: "snapshot-table"},
          h("thead", {}, h("tr", {}, ["time", "id", "kind", "state", "files", "bytes", "added ~changed −deleted", "bytes added", ""].map((x, i) =>
            h("th", {class: [1, 2, 7].includes(i) ? "hide-narrow" : null}, x)))),
          tbody)), more),
      snaps.length >= 2 ? card("Compare two snapshots", diffForm(snaps, ctx, newest[1].id, newest[0].id)) : "");
    let shown = 0;
    const redraw = () => {
      if (!ctx.alive) return;
      fill(tbody, snapshotRows(newest.slice(0, shown), ctx));
      plots(plotBox, snaps, ctx);
    };
    const showMore = () => {
      shown = Math.min(newest.length, shown + PAGE);
      redraw();
      fill(more, shown < newest.length ? button(`Show ${Math.min(PAGE, newest.length - shown)} more`, () => { showMore(); fetchFigures(newest.slice(0, shown), redraw); }) : null);
    };
    showMore();
    ctx.onResize(() => plots(plotBox, snaps, ctx));
    if (!snaps.length) tbody.append(h("tr", {}, h("td", {colspan: 9, class: "muted"}, "No snapshots yet.")));
    // The list may carry figures (cheap); else ask for those shown and plotted.
    let pending = 0;
    await fetchFigures([...newest.slice(0, shown), ...snaps.slice(-PLOTTED)].filter((x, i, arr) => arr.indexOf(x) === i), () => {
      if (++pending % 8 === 0) redraw();
    });
    redraw();
  })();
}

export {figuresCell};
