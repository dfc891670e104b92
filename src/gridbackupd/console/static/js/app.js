// The console's entry point: sign-in, the navigation between screens
// (the part of the URL after #), and the polling each screen asks for.

import * as api from "./api.js";
import {fill, notice} from "./dom.js";
import * as overview from "./overview.js";
import * as snapshots from "./snapshots.js";
import * as browse from "./browse.js";
import * as fileHistory from "./history.js";
import * as restore from "./restore.js";
import * as actions from "./actions.js";

const VIEWS = {overview, snapshots, browse, diff: snapshots, history: fileHistory, restore, actions};
const NAV = {browse: "snapshots", diff: "snapshots", history: "snapshots"};

const $ = (id) => document.getElementById(id);
let current = null;  // the running screen: {timers: Set, alive: bool}
let signedIn = false;

/** Go to a screen: go("browse", {snapshot: id, path: "/x"}). */
export function go(name, params) {
  const q = new URLSearchParams(params || {}).toString();
  const hash = `#/${name}${q ? `?${q}` : ""}`;
  if (location.hash === hash) route();
  else location.hash = hash;
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [name, q] = raw.split("?", 2);
  return {name: VIEWS[name] ? name : "overview", params: new URLSearchParams(q || "")};
}

function stopCurrent() {
  if (!current) return;
  current.alive = false;
  for (const t of current.timers) clearTimeout(t);
  current = null;
}

function route() {
  if (!signedIn) return;
  stopCurrent();
  const {name, params} = parseHash();
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.view === (NAV[name] || name));
  }
  const screen = {alive: true, timers: new Set(), resizers: []};
  current = screen;
  const ctx = {
    name, params, go,
    get alive() { return screen.alive; },
    /** Call ``fn`` when the page's width changes, while this screen is shown. */
    onResize(fn) { screen.resizers.push(fn); },
    /** Call ``fn`` now and every ``ms`` after each call ends, while this screen is shown. */
    poll(fn, ms) {
      const tick = async () => {
        if (!screen.alive) return;
        try { await fn(); } catch (e) { if (e.status !== 401) console.warn(e.message); }
        if (screen.alive) {
          const t = setTimeout(() => { screen.timers.delete(t); tick(); }, ms);
          screen.timers.add(t);
        }
      };
      tick();
    },
  };
  const root = $("view");
  fill(root);
  document.title = `gridbackup · ${name}`;
  try {
    VIEWS[name].render(root, ctx);
  } catch (e) {
    fill(root, notice("error", e.message));
  }
  window.scrollTo(0, 0);
}

function showLogin(message) {
  signedIn = false;
  stopCurrent();
  fill($("view"));
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  const msg = $("login-message");
  msg.hidden = !message;
  msg.textContent = message || "";
  $("token").focus();
}

function showConsole() {
  signedIn = true;
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  route();
}

async function login(event) {
  event.preventDefault();
  const error = $("login-error");
  error.hidden = true;
  const token = $("token").value.trim();
  try {
    await api.call("POST", "/v1/session", {token});
    $("token").value = "";
    showConsole();
  } catch (e) {
    error.textContent = e.status === 401 ? "That token is not right." : e.message;
    error.hidden = false;
  }
}

async function logout() {
  try { await api.del("/v1/session"); } catch (e) { /* signed out either way */ }
  showLogin("You are signed out.");
}

async function start() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  let width = window.innerWidth;
  window.addEventListener("resize", () => {
    if (window.innerWidth === width || !current) return;
    width = window.innerWidth;
    for (const fn of current.resizers) fn();
  });
  api.onUnauthorized(() => { if (signedIn) showLogin("Your session has ended: sign in again."); });
  const expired = new URLSearchParams(location.search).get("login") === "expired";
  if (expired) history.replaceState(null, "", `/${location.hash}`);
  try {
    await api.get("/v1/session");
    showConsole();
  } catch (e) {
    if (e.status === 401) {
      showLogin(expired ? "That sign-in link was used already or has expired: run gridbackup ui again, or paste the token." : "");
    } else {
      fill($("view"), notice("error", `The daemon does not answer: ${e.message}`));
    }
  }
}




start();
