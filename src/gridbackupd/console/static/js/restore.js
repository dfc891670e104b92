// Restore from the browser: pick a snapshot (or a time), tick paths,
// choose a target, a dry run first with its plan, then the restore with
// its progress, a cancel, and the report.

import * as api from "./api.js";
import {button, facts, fill, h, notice, table} from "./dom.js";
import * as fmt from "./format.js";
import {card, progress, stateBadge} from "./widgets.js";
import {breadcrumbs, directory, pathFromParams, pathParams, startPath} from "./browse.js";
import {label as snapLabel, listSnapshots} from "./snapshots.js";

const POLL = 1000;
const FINISHED = new Set(["done", "failed", "cancelled"]);

function planView(plan) {
  if (!plan) return h("p", {class: "muted"}, "No plan.");
  return facts([
    ["Files", `${fmt.count(plan.files)} (${fmt.bytes(plan.bytes)})`],
    ["Entries", plan.entries ? Object.entries(plan.entries).map(([k, v]) => `${fmt.count(v)} ${k}`).join(", ") : null],
    ["From the grid", plan.gets !== undefined ? `${fmt.count(plan.gets)} ${plan.gets === 1 ? "read" : "reads"} of ${fmt.count(plan.packs)} ${plan.packs === 1 ? "pack" : "packs"}, ${fmt.bytes(plan.fetch_bytes)}` : null],
    ["Inline files", plan.inline_files !== undefined ? fmt.count(plan.inline_files) : null],
    ["Not uploaded yet", plan.pending_files ? `${fmt.count(plan.pending_files)} files (they cannot be restored yet)` : plan.pending_files === 0 ? "none" : null],
  ]);
}

function report(r) {
  const parts = [];
  parts.push(facts([
    ["State", stateBadge(r.state)],
    ["Snapshot", h("span", {class: "mono small"}, r.snapshot)],
    ["Target", h("span", {class: "path"}, r.target)],
    ["Paths", r.paths && r.paths.length ? h("span", {class: "path"}, r.paths.join(", ")) : "everything"],
    ["Files", `${fmt.count(r.files_done)} of ${fmt.count(r.files_total)}`],
    ["Bytes", `${fmt.bytes(r.bytes_done)} of ${fmt.bytes(r.bytes_total)}`],
    ["Unchanged", r.unchanged ? `${fmt.count(r.unchanged)} files already as the snapshot has them` : null],
    ["Verified", r.files_verified !== undefined && r.files_verified !== null ? `${fmt.count(r.files_verified)} files read back and checked` : null],
    ["Set-id bits dropped", r.setid_dropped ? fmt.count(r.setid_dropped) : null],
    ["Waiting for", r.waiting_for ? `the ${r.waiting_for} since ${fmt.time(r.waiting_since)}` : null],
    ["Started", fmt.time(r.created)],
    ["Finished", r.finished ? fmt.time(r.finished) : null],
  ]));
  if (!FINISHED.has(r.state)) parts.push(progress(r.bytes_done, r.bytes_total, `${fmt.count(r.files_done)} of ${fmt.count(r.files_total)} files`));
  if (r.plan) parts.push(h("h3", {}, "Plan"), planView(r.plan));
  if (r.errors && r.errors.length) {
    parts.push(h("h3", {}, `Errors (${fmt.count(r.errors.length)})`),
      table(["path", "reason"], r.errors.map((e) => h("tr", {}, h("td", {class: "path"}, e.path || "–"), h("td", {}, e.reason))), "errors"));
  }
  if (r.pending && r.pending.length) {
    parts.push(h("h3", {}, `Not uploaded yet (${fmt.count(r.pending.length)})`),
      table(["path", "reason"], r.pending.map((e) => h("tr", {}, h("td", {class: "path"}, typeof e === "string" ? e : e.path), h("td", {}, typeof e === "string" ? "" : e.reason || ""))), "pending"));
  }
  return parts;
}

/** Poll a restore until it ends; ``each(r)`` sees every state. */
async function follow(id, ctx, each) {
  for (;;) {
    const r = await api.get(`/v1/restores/${encodeURIComponent(id)}`);
    each(r);
    if (FINISHED.has(r.state) || !ctx.alive) return r;
    await new Promise((resolve) => setTimeout(resolve, POLL));
  }
}

function progressScreen(root, ctx, id) {
  const body = h("div", {id: "restore-report"}, h("p", {class: "muted"}, "Loading…"));
  const out = h("span", {class: "action-out"});
  const cancel = button("Cancel the restore", async () => {
    cancel.disabled = true;
    try { await api.del(`/v1/restores/${encodeURIComponent(id)}`); } catch (e) { out.textContent = e.message; }
  }, "danger");
  cancel.id = "restore-cancel";
  const bar = h("p", {class: "buttons"}, cancel, out, h("a", {href: "#/restore", class: "button"}, "New restore"));
  root.append(card(h("span", {}, "Restore ", h("span", {class: "mono small"}, id)), body, bar));
  follow(id, ctx, (r) => {
    fill(body, report(r));
    body.dataset.state = r.state;
    cancel.hidden = FINISHED.has(r.state);
  }).catch((e) => fill(body, notice("error", e.message)));
}

function recent(el, ctx) {
  api.all("/v1/restores?limit=1000", "restores", 5000).then((rs) => {
    if (!ctx.alive || !rs.length) return;
    fill(el, card("Recent restores", table(["started", "id", "state", "files", "target"], rs.slice(-20).reverse().map((r) => h("tr", {},
      h("td", {class: "nowrap"}, fmt.time(r.created)),
      h("td", {class: "mono small"}, h("a", {href: `#/restore?id=${encodeURIComponent(r.id)}`}, r.id)),
      h("td", {}, stateBadge(r.state), r.dry_run ? " dry run" : ""),
      h("td", {class: "num"}, `${fmt.count(r.files_done)}/${fmt.count(r.files_total)}`),
      h("td", {class: "path"}, r.target))))));
  }).catch(() => {});
}

export function render(root, ctx) {
  if (ctx.params.get("id")) return progressScreen(root, ctx, ctx.params.get("id"));
  const selected = new Map();  // shown path -> {path}
  const start = ctx.params.get("path") || ctx.params.get("path_b64") ? pathFromParams(ctx.params) : null;
  if (start && !start.path_b64 && start.path !== "/") selected.set(start.path, start);

  const snapSelect = h("select", {id: "restore-snapshot", "aria-label": "snapshot"}, h("option", {value: "latest"}, "latest complete"));
  const asOf = h("input", {type: "datetime-local", id: "restore-as-of", "aria-label": "as of"});
  const target = h("input", {type: "text", id: "restore-target", placeholder: "/absolute/target/directory", spellcheck: "false", required: true});
  const overwrite = h("input", {type: "checkbox", id: "restore-overwrite"});
  const verify = h("input", {type: "checkbox", id: "restore-verify"});
  const chosen = h("div", {id: "restore-selected"});
  const tree = h("div", {class: "tree"});
  const planBox = h("div", {id: "restore-plan"});
  const message = h("div");
  const dryRun = button("Dry run", () => run(true), "primary");
  dryRun.id = "restore-dry-run";
  const go = button("Restore", () => run(false), "primary");
  go.id = "restore-run";
  go.disabled = true;
  let planned = null;  // the request the shown plan is for

  function request(dry) {
    const body = {target: target.value.trim(), dry_run: dry, overwrite: overwrite.checked, verify: verify.checked};
    body.snapshot = asOf.value ? {as_of: new Date(asOf.value).toISOString()} : snapSelect.value;
    if (selected.size) body.paths = [...selected.values()].map((p) => p.path);
    return body;
  }

  function changed() {
    planned = null;
    go.disabled = true;
    fill(chosen, selected.size
      ? h("ul", {class: "chosen"}, [...selected.keys()].map((p) => h("li", {}, h("span", {class: "path"}, p), " ",
        button("×", () => { selected.delete(p); changed(); showDir(currentDir); }, "quiet small"))))
      : h("p", {class: "muted"}, "Nothing ticked: the whole snapshot."));
  }

  async function run(dry) {
    fill(message);
    const body = request(dry);
    if (!body.target.startsWith("/")) { fill(message, notice("error", "The target must be an absolute directory.")); return; }
    if (!dry && JSON.stringify({...planned, dry_run: false}) !== JSON.stringify(body)) {
      fill(message, notice("warn", "Run a dry run of this restore first."));
      return;
    }
    dryRun.disabled = true;
    try {
      const {id} = await api.post("/v1/restores", body);
      if (!dry) { ctx.go("restore", {id}); return; }
      fill(planBox, h("p", {class: "muted"}, "Planning…"));
      const r = await follow(id, ctx, () => {});
      if (!ctx.alive) return;
      if (r.state !== "done") {
        fill(planBox, notice("error", `The dry run ${r.state}: ${(r.errors || []).map((e) => e.reason).join("; ") || "no reason given"}`));
        return;
      }
      fill(planBox, h("h3", {}, "Plan"), planView(r.plan), ...(r.pending && r.pending.length ? report({...r, plan: null}).slice(-2) : []));
      planned = body;
      go.disabled = false;
    } catch (e) {
      const paths = e.doc && e.doc.error && e.doc.error.paths;
      fill(message, notice("error", e.message + (paths ? ` (${paths.join(", ")})` : "")));
    } finally {
      dryRun.disabled = false;
    }
  }

  let currentDir = {path: "/"};
  function showDir(dir) {
    currentDir = dir;
    const snap = asOf.value ? "latest" : snapSelect.value;
    const listing = directory({snapshot: snap, dir, selected, onSelect: changed,
      onOpen: (e) => { if (e.kind === "dir") showDir(e); }});
    fill(tree, breadcrumbs(dir, showDir), listing.el);
    listing.ready.catch((e) => fill(tree, breadcrumbs({path: "/"}, showDir), notice("error", e.message)));
  }

  for (const el of [snapSelect, asOf, target, overwrite, verify]) el.addEventListener("change", () => { planned = null; go.disabled = true; });
  const showStart = () => startPath(asOf.value ? "latest" : snapSelect.value).then(showDir, () => showDir({path: "/"}));
  snapSelect.addEventListener("change", () => { selected.clear(); changed(); showStart(); });

  root.append(
    card("Restore",
      h("div", {class: "form-grid"},
        h("label", {for: "restore-snapshot"}, "Snapshot"), snapSelect,
        h("label", {for: "restore-as-of"}, "or as of"), asOf,
        h("label", {for: "restore-target"}, "Target"), target,
        h("span", {}, "Options"), h("span", {}, h("label", {}, overwrite, " overwrite existing files"), " ", h("label", {}, verify, " read back and verify"))),
      h("h3", {}, "Paths"), chosen, tree,
      h("p", {class: "buttons"}, dryRun, go), message, planBox),
    h("div", {id: "recent-restores"}));
  recent(root.lastChild, ctx);
  changed();

  const wanted = ctx.params.get("snapshot");
  listSnapshots().then((snaps) => {
    if (!ctx.alive) return;
    snapSelect.append(...snaps.slice().reverse().map((x) => h("option", {value: x.id}, snapLabel(x))));
    if (wanted) snapSelect.value = wanted;
    if (start && start.path !== "/") {
      // Open the directory of the wanted path, so it is seen ticked.
      const parent = start.path_b64 ? {path: "/"} : {path: start.path.replace(/\/[^/]*$/, "") || "/"};
      showDir(parent);
    } else {
      showStart();
    }
  }).catch((e) => fill(tree, notice("error", e.message)));
}

export {pathParams};
