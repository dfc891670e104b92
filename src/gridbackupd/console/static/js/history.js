// A file's history: every version of one path across the snapshots
// (GET /v1/history?path=P), each with its download and a restore.

import * as api from "./api.js";
import {fill, h, notice, table} from "./dom.js";
import * as fmt from "./format.js";
import {badge, card} from "./widgets.js";
import {contentUrl, pathFromParams, pathParams} from "./browse.js";

function versionsOf(doc) {
  return doc.versions || doc.history || doc.changes || [];
}

function snapshotOf(v) {
  return v.snapshot || v.snapshot_id || v.id;
}

function row(v, path) {
  const snap = snapshotOf(v);
  const change = v.change || v.kind_of_change || null;
  const kind = {added: "ok", changed: "warn", deleted: "bad"}[change] || "";
  const gone = change === "deleted";
  const mtime = v.mtime_ns !== undefined ? fmt.nsTime(v.mtime_ns) : v.mtime !== undefined ? fmt.time(v.mtime) : "–";
  return h("tr", {},
    h("td", {class: "nowrap"}, fmt.time(v.time ?? v.snapshot_time)),
    h("td", {class: "mono small"}, h("a", {href: `#/browse?${new URLSearchParams({snapshot: snap, ...pathParams(path)})}`}, snap)),
    h("td", {}, change ? badge(change, kind) : "–", v.complete === false ? [" ", badge("incomplete", "warn")] : null),
    h("td", {class: "num nowrap"}, v.size !== undefined && v.size !== null ? fmt.bytes(v.size) : "–"),
    h("td", {class: "nowrap"}, mtime),
    h("td", {class: "nowrap"}, gone ? h("span", {class: "muted"}, "deleted here") : [
      h("a", {href: contentUrl(snap, path), download: fmt.basename(fmt.shownPath(path))}, "Download"), " · ",
      h("a", {href: `#/restore?${new URLSearchParams({snapshot: snap, ...pathParams(path)})}`}, "Restore…")]));
}

export function render(root, ctx) {
  const path = pathFromParams(ctx.params);
  const input = h("input", {type: "text", id: "history-path", value: fmt.shownPath(path) === "/" ? "" : fmt.shownPath(path),
    placeholder: "/absolute/path/of/a/file", spellcheck: "false"});
  const out = h("div");
  root.append(card("A file's history",
    h("form", {class: "inline wide", onsubmit: (e) => { e.preventDefault(); ctx.go("history", {path: input.value.trim()}); }},
      h("label", {for: "history-path"}, "Path"), input, h("button", {type: "submit"}, "Show")),
    out));
  if (!ctx.params.get("path") && !ctx.params.get("path_b64")) return;
  fill(out, h("p", {class: "muted"}, "Loading…"));
  (async () => {
    try {
      const doc = await api.get(`/v1/history${fmt.query(pathParams(path))}`);
      if (!ctx.alive) return;
      const versions = versionsOf(doc).slice().sort((a, b) => (b.time ?? 0) - (a.time ?? 0));
      fill(out,
        h("p", {}, h("span", {class: "path"}, fmt.shownPath(path)), ` — ${fmt.count(versions.length)} versions, newest first`),
        doc.uncounted ? notice("info", `${fmt.count(doc.uncounted)} snapshots are still being counted: their versions show once done.`) : null,
        versions.length ? table(["snapshot time", "snapshot", "change", "size", "modified", ""], versions.map((v) => row(v, path)), "history")
          : h("p", {class: "muted"}, "No snapshot has this path."));
    } catch (e) {
      fill(out, notice("error", e.status === 404 && e.code === "not_found"
        ? "This daemon has no history endpoint (GET /v1/history)." : e.message));
    }
  })();
}
