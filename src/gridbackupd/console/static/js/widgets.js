// Pieces several screens share: progress bars, cards, generic facts for
// status fields this page does not know yet, and action buttons that say
// how they went.

import {button, facts, h} from "./dom.js";
import * as fmt from "./format.js";

export function card(title, ...body) {
  return h("section", {class: "card"}, h("h2", {}, title), ...body);
}

export function progress(done, total, label) {
  const bar = h("progress", {max: total > 0 ? total : 1, value: total > 0 ? Math.min(done, total) : 0});
  return h("div", {class: "progress"}, bar, h("span", {class: "muted"}, label));
}

const TIME_KEY = /(_at|_since|since|as_of|_due|due|time|finished|started|requested|expires)$/;

/** A value of unknown meaning, shown as well as can be told from its key and type. */
export function value(key, v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "number") {
    if (TIME_KEY.test(key) && v > 1e9) return `${fmt.time(v)} (${fmt.ago(v)})`;
    if (/bytes/.test(key)) return fmt.bytes(v);
    if (/seconds|interval|settle/.test(key)) return fmt.duration(v);
    return fmt.count(v);
  }
  if (typeof v === "string") return v;
  if (Array.isArray(v)) return v.length ? v.map((x) => (typeof x === "object" ? JSON.stringify(x) : String(x))).join(", ") : "none";
  return JSON.stringify(v);
}

/** An object's fields as facts, keys made readable. */
export function genericFacts(obj) {
  if (obj === null || typeof obj !== "object") return h("p", {}, value("", obj));
  return facts(Object.entries(obj).map(([k, v]) => [k.replace(/_/g, " "), value(k, v)]));
}

/**
 * A button that runs ``action`` (async), disables itself meanwhile and
 * shows the outcome in ``out`` (an element): ``done(result)`` says what to show.
 */
export function actionButton(label, action, out, done, cls) {
  const b = button(label, async () => {
    b.disabled = true;
    out.replaceChildren(h("span", {class: "muted"}, "…"));
    try {
      const result = await action();
      out.replaceChildren(done ? done(result) : h("span", {class: "ok"}, "Done."));
    } catch (e) {
      out.replaceChildren(h("span", {class: "error-text", role: "alert"}, e.message));
    } finally {
      b.disabled = false;
    }
  }, cls);
  return b;
}

export function badge(text, kind) {
  return h("span", {class: `badge ${kind || ""}`}, text);
}

const STATE_KIND = {
  complete: "ok", done: "ok", ready: "ok",
  failed: "bad", incomplete: "warn", cancelled: "warn", error: "bad",
  running: "busy", scanning: "busy", uploading: "busy", queued: "muted",
};

export function stateBadge(state) {
  return badge(state || "–", STATE_KIND[state] || "");
}
