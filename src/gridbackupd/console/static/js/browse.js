// Browsing a snapshot's tree: a directory a page at a time (the files
// endpoint's cursor), a file's details with its download through
// /content, and the way to its history.  Paths that are not UTF-8 travel as
// path_b64 and are shown with \xNN escapes; every name is text, never HTML.

import * as api from "./api.js";
import {button, facts, fill, h, notice} from "./dom.js";
import * as fmt from "./format.js";
import {card} from "./widgets.js";
import {label as snapLabel, listSnapshots} from "./snapshots.js";

const LIMIT = 200;
const enc = new TextEncoder();

/** A path as {path} or {path_b64} from the URL's parameters (the same names as the API's). */
export function pathFromParams(params) {
  if (params.get("path_b64")) return {path: "", path_b64: params.get("path_b64")};
  return {path: params.get("path") || "/"};
}

/** The API/URL parameters naming a path exactly. */
export function pathParams(p) {
  return p.path_b64 ? {path_b64: p.path_b64} : {path: p.path};
}

function pathBytes(p) {
  return p.path_b64 ? fmt.b64ToBytes(p.path_b64) : enc.encode(p.path);
}

function fromBytes(bytes) {
  try {
    return {path: new TextDecoder("utf-8", {fatal: true}).decode(bytes)};
  } catch (e) {
    return {path: "", path_b64: fmt.bytesToB64(bytes)};
  }
}

/** The directories from / down to ``p``, each with the name to show. */
export function crumbs(p) {
  const bytes = pathBytes(p);
  const out = [{p: {path: "/"}, name: "/"}];
  for (let i = 1; i <= bytes.length; i++) {
    if (i === bytes.length || bytes[i] === 0x2f) {
      const start = bytes.lastIndexOf(0x2f, i - 1) + 1;
      if (i > start) out.push({p: fromBytes(bytes.subarray(0, i)), name: fmt.shownBytes(bytes.subarray(start, i))});
    }
  }
  return out;
}

export function contentUrl(snapshot, entry) {
  return `/v1/snapshots/${encodeURIComponent(snapshot)}/content${fmt.query(fmt.pathQuery(entry))}`;
}

function baseName(entry) {
  const shown = fmt.shownPath(entry);
  return fmt.basename(shown);
}

/** The details of one entry, with Download and History for a file. */
export function details(snapshot, entry, ctx) {
  const isFile = entry.kind === "file";
  return h("div", {class: "details", id: "file-details"},
    facts([
      ["Path", h("span", {class: "path"}, fmt.shownPath(entry))],
      ["Kind", entry.kind + (entry.virtual ? " (above the backed-up paths)" : "")],
      ["Size", entry.size !== undefined ? `${fmt.bytes(entry.size)} (${fmt.count(entry.size)} bytes)` : null],
      ["Modified", entry.mtime_ns !== undefined ? fmt.nsTime(entry.mtime_ns) : null],
      ["Mode", entry.mode !== undefined ? fmt.mode(entry.mode, entry.kind) : null],
      ["Owner", entry.uid !== undefined ? `${entry.user ?? entry.uid}:${entry.group ?? entry.gid}` : null],
      ["Target", entry.target !== undefined ? h("span", {class: "path"}, entry.target_b64 ? fmt.shownBytes(fmt.b64ToBytes(entry.target_b64)) : entry.target) : null],
      ["SHA-256", entry.sha256 ? h("span", {class: "mono small"}, entry.sha256) : null],
      ["Stored", isFile ? (entry.inline ? "inline in the backup log" : `${fmt.count(entry.blobs)} blobs`) : null],
      ["Flags", entry.flags && entry.flags.length ? entry.flags.join(", ") : null],
    ]),
    h("p", {class: "buttons"},
      isFile ? h("a", {class: "button primary", id: "download", href: contentUrl(snapshot, entry), download: baseName(entry)}, "Download") : null,
      isFile && !entry.path_b64 ? h("a", {class: "button", href: `#/history?${new URLSearchParams({path: entry.path})}`}, "History") : null,
      !entry.virtual ? h("a", {class: "button", href: `#/restore?${new URLSearchParams({snapshot, ...pathParams(entry)})}`}, "Restore…") : null));
}

/**
 * One directory of a snapshot, a page at a time: ``onOpen(p)`` is called
 * with a directory or file to go to; with ``selected`` (a Map of shown path
 * -> entry) each row gets a tick box.
 */
export function directory({snapshot, dir, onOpen, selected, onSelect}) {
  const tbody = h("tbody");
  const more = h("div");
  const box = h("div", {}, h("div", {class: "table-wrap"}, h("table", {class: "listing"},
    h("thead", {}, h("tr", {}, selected ? h("th", {class: "tick"}, "") : null, h("th", {}, "name"), h("th", {}, "size"), h("th", {class: "hide-narrow"}, "modified"), h("th", {}, ""))),
    tbody)), more);
  let cursor = null;
  const row = (e) => {
    const name = baseName(e);
    // With tick boxes, a name that cannot be entered ticks its box.
    const opener = h("a", {href: "#", class: `name ${e.kind}`, onclick: (ev) => {
      ev.preventDefault();
      if (tick && e.kind !== "dir" && !tick.disabled) tick.click();
      else onOpen(e);
    }}, e.kind === "dir" ? `${name}/` : name);
    const tick = selected ? h("input", {type: "checkbox", "aria-label": `select ${name}`, checked: selected.has(fmt.shownPath(e)),
      disabled: !!e.virtual || !!e.path_b64,
      title: e.path_b64 ? "Restore its directory instead: a name that is not UTF-8 cannot be picked alone" : null,
      onchange: (ev) => { if (ev.target.checked) selected.set(fmt.shownPath(e), e); else selected.delete(fmt.shownPath(e)); onSelect && onSelect(); }}) : null;
    return h("tr", {dataset: {kind: e.kind}},
      selected ? h("td", {class: "tick"}, tick) : null,
      h("td", {class: "path"}, opener, e.virtual ? h("span", {class: "muted small"}, " (not backed up)") : null,
        e.kind === "symlink" && e.target !== undefined ? h("span", {class: "muted small"}, ` → ${e.target_b64 ? fmt.shownBytes(fmt.b64ToBytes(e.target_b64)) : e.target}`) : null),
      h("td", {class: "num nowrap"}, e.kind === "file" ? fmt.bytes(e.size) : ""),
      h("td", {class: "nowrap hide-narrow"}, e.mtime_ns !== undefined ? fmt.nsTime(e.mtime_ns) : ""),
      h("td", {class: "nowrap"}, e.kind === "file" ? h("a", {href: contentUrl(snapshot, e), download: name, "aria-label": `download ${name}`}, "↓") : ""));
  };
  async function page() {
    const q = fmt.query({...pathParams(dir), limit: LIMIT, cursor});
    const doc = await api.get(`/v1/snapshots/${encodeURIComponent(snapshot)}/files${q}`);
    tbody.append(...doc.entries.map(row));
    if (!tbody.firstChild) tbody.append(h("tr", {}, h("td", {colspan: 5, class: "muted"}, "Empty.")));
    cursor = doc.next_cursor;
    fill(more, cursor ? button("More entries", () => page().catch((e) => fill(more, notice("error", e.message)))) : null);
    return doc;
  }
  return {el: box, ready: page()};
}

/**
 * The path to start at: down through the directories above the backed-up
 * paths while there is one way to go, into the backed-up path itself.
 */
export async function startPath(snapshot) {
  let p = {path: "/", virtual: true};
  for (let i = 0; i < 64 && p.virtual; i++) {
    const doc = await api.get(`/v1/snapshots/${encodeURIComponent(snapshot)}/files${fmt.query({...pathParams(p), limit: 2})}`);
    if (doc.entries.length !== 1 || doc.entries[0].kind !== "dir") break;
    p = doc.entries[0];
  }
  return p;
}

export function breadcrumbs(p, onOpen) {
  const parts = crumbs(p);
  return h("nav", {class: "crumbs", "aria-label": "path"},
    parts.map((c, i) => [
      i > 1 ? h("span", {class: "sep"}, "/") : null,
      i === parts.length - 1 ? h("strong", {}, c.name) : h("a", {href: "#", onclick: (e) => { e.preventDefault(); onOpen(c.p); }}, c.name),
    ]));
}

export function render(root, ctx) {
  const params = ctx.params;
  const snapshot = params.get("snapshot") || "latest";
  const head = h("div", {class: "browse-head"});
  const body = h("div", {}, h("p", {class: "muted"}, "Loading…"));
  root.append(card("Browse a snapshot", head, body));
  const open = (p) => ctx.go("browse", {snapshot, ...pathParams(p)});

  listSnapshots().then((snaps) => {
    if (!ctx.alive) return;
    const select = h("select", {id: "browse-snapshot", "aria-label": "snapshot", onchange: () => ctx.go("browse", {snapshot: select.value})},
      h("option", {value: "latest", selected: snapshot === "latest"}, "latest complete"),
      snaps.slice().reverse().map((x) => h("option", {value: x.id, selected: x.id === snapshot}, snapLabel(x))));
    head.prepend(h("label", {class: "inline"}, "Snapshot ", select));
  }).catch(() => {});

  (async () => {
    try {
      const explicit = params.get("path") || params.get("path_b64");
      const dir = explicit ? pathFromParams(params) : await startPath(snapshot);
      if (!ctx.alive) return;
      const doc = await api.get(`/v1/snapshots/${encodeURIComponent(snapshot)}/files${fmt.query({...pathParams(dir), limit: 1})}`);
      if (!ctx.alive) return;
      head.append(breadcrumbs(dir, open));
      if (doc.entry && doc.entry.kind !== "dir") {
        fill(body, details(doc.snapshot, doc.entry, ctx));
        return;
      }
      const listing = directory({snapshot: doc.snapshot, dir, onOpen: open});
      fill(body, listing.el);
      await listing.ready;
    } catch (e) {
      fill(body, notice("error", e.message));
    }
  })();
}
