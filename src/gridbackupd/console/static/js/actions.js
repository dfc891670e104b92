// Actions: back up now, pause or resume uploads, run a maintenance job,
// and forget snapshots, always with a dry run first.

import * as api from "./api.js";
import {button, facts, fill, h, notice, table} from "./dom.js";
import * as fmt from "./format.js";
import {actionButton, card, genericFacts, stateBadge} from "./widgets.js";
import {label as snapLabel, listSnapshots} from "./snapshots.js";

const JOB_KINDS = ["leases", "check", "drill", "prune"];

function jobRows(jobs) {
  return jobs.map((j) => h("tr", {},
    h("td", {class: "nowrap"}, fmt.time(j.requested)),
    h("td", {}, j.kind),
    h("td", {}, stateBadge(j.state)),
    h("td", {}, j.state === "running" && j.progress && j.progress.total ? `${fmt.count(j.progress.done || 0)} of ${fmt.count(j.progress.total)}` :
      j.error ? h("span", {class: "error-text"}, j.error) : j.result ? summary(j.result) : "")));
}

function summary(result) {
  return Object.entries(result).filter(([, v]) => typeof v !== "object")
    .slice(0, 6).map(([k, v]) => `${k.replace(/_/g, " ")}: ${typeof v === "number" ? fmt.count(v) : v}`).join(", ");
}

function forgetPlan(plan) {
  return h("div", {},
    facts([
      ["Policy", plan.policy ? Object.entries(plan.policy).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(", ") || "keep everything" : "the snapshots named"],
      ["Forgets", plan.forget.length ? h("span", {class: "mono small"}, plan.forget.join(", ")) : "nothing"],
      ["Keeps", `${fmt.count(plan.keep.length)} snapshots`],
      ["Full logs rewritten", plan.rewrite_full.length ? fmt.count(plan.rewrite_full.length) : null],
      ["Refused", plan.refused.length ? plan.refused.map((r) => JSON.stringify(r)).join("; ") : null],
    ]),
    plan.prune ? h("details", {}, h("summary", {}, "What prune would free"), genericFacts(plan.prune)) : null);
}

export function render(root, ctx) {
  const backupOut = h("span", {class: "action-out", id: "backup-out"});
  const pauseOut = h("span", {class: "action-out"});
  const uploads = h("p", {class: "muted"}, "…");
  const pauseBox = h("span");
  const jobKind = h("select", {id: "job-kind", "aria-label": "job"}, JOB_KINDS.map((k) => h("option", {value: k}, k)));
  const jobOut = h("span", {class: "action-out"});
  const jobsBody = h("div");
  const forgetList = h("div", {class: "forget-list"});
  const forgetOut = h("div", {id: "forget-plan"});
  let forgetRequest = null;

  root.append(
    h("div", {class: "cards"},
      card("Back up now",
        h("p", {}, "Scan the configured paths and upload what changed."),
        h("p", {class: "buttons"}, actionButton("Back up now", () => api.post("/v1/backups"), backupOut,
          (r) => h("span", {}, "Started ", h("a", {class: "mono", href: `#/snapshots`}, r.id)), "primary"), backupOut)),
      card("Uploads", uploads, h("p", {class: "buttons"}, pauseBox, pauseOut)),
      card("Run a maintenance job",
        h("p", {}, "leases renews every lease, check verifies and repairs, drill restores a sample and checks it, prune frees what no snapshot uses."),
        h("p", {class: "buttons"}, jobKind, actionButton("Run", () => api.post("/v1/jobs", {kind: jobKind.value}), jobOut,
          (j) => h("span", {}, `Job ${j.id} ${j.state}.`)), jobOut))),
    card("Maintenance jobs", jobsBody),
    card("Forget snapshots",
      h("p", {}, "Tick snapshots to forget, or none to apply the [retention] policy. A dry run comes first."),
      forgetList,
      h("p", {class: "buttons"}, button("Dry run", () => forget(true), "primary"),
        (() => { const b = button("Forget", () => forget(false), "danger"); b.id = "forget-run"; b.disabled = true; return b; })()),
      forgetOut));

  const ticks = new Map();
  async function forget(dry) {
    const chosen = [...ticks.entries()].filter(([, box]) => box.checked).map(([id]) => id);
    const body = {dry_run: dry};
    if (chosen.length) body.snapshots = chosen;
    const runButton = document.getElementById("forget-run");
    if (!dry && JSON.stringify({...forgetRequest, dry_run: false}) !== JSON.stringify(body)) {
      fill(forgetOut, notice("warn", "Run a dry run of this first."));
      return;
    }
    fill(forgetOut, h("p", {class: "muted"}, dry ? "Planning…" : "Forgetting…"));
    try {
      const doc = await api.call("POST", "/v1/forget", body);
      if (dry) {
        forgetRequest = body;
        runButton.disabled = !doc.forget.length;
        fill(forgetOut, h("h3", {}, "Dry run"), forgetPlan(doc));
      } else {
        forgetRequest = null;
        runButton.disabled = true;
        fill(forgetOut, notice("ok", `Forgetting ${doc.forget.length} snapshots${doc.job ? ` (job ${doc.job.id || doc.job})` : ""}.`));
      }
    } catch (e) {
      fill(forgetOut, notice("error", e.message));
    }
  }
  forgetList.addEventListener("change", () => { forgetRequest = null; document.getElementById("forget-run").disabled = true; });

  listSnapshots().then((snaps) => {
    if (!ctx.alive) return;
    fill(forgetList, snaps.length ? h("div", {class: "table-wrap scroll-y"}, h("table", {}, h("tbody", {}, snaps.slice().reverse().map((x) => {
      const box = h("input", {type: "checkbox", "aria-label": `forget ${x.id}`});
      ticks.set(x.id, box);
      return h("tr", {}, h("td", {class: "tick"}, box), h("td", {}, snapLabel(x)), h("td", {class: "num"}, fmt.bytes(x.bytes)));
    })))) : h("p", {class: "muted"}, "No snapshots."));
  }).catch((e) => fill(forgetList, notice("error", e.message)));

  ctx.poll(async () => {
    const [st, jobs] = await Promise.all([api.get("/v1/status"), api.get("/v1/jobs?limit=20")]);
    const up = st.upload;
    if (up) {
      fill(uploads, up.paused ? `Paused${up.paused_by ? ` by ${up.paused_by}` : ""}.` : `Running: ${fmt.count(up.pending_blobs)} blobs (${fmt.bytes(up.pending_bytes)}) pending.`);
      const resume = up.paused;
      fill(pauseBox, actionButton(resume ? "Resume uploads" : "Pause uploads",
        () => api.post(resume ? "/v1/uploads/resume" : "/v1/uploads/pause"), pauseOut,
        () => h("span", {}, resume ? "Resumed." : "Paused.")));
    } else {
      fill(uploads, "Not known until the grid is connected.");
    }
    fill(jobsBody, jobs.jobs.length ? table(["requested", "job", "state", "result"], jobRows(jobs.jobs), "jobs") : h("p", {class: "muted"}, "No jobs yet."));
  }, 3000);
}
