// The daemon's JSON API, with the session cookie: changing requests carry
// the CSRF token from the gb_csrf cookie; a 401 sends the page to sign-in.

export class ApiError extends Error {
  constructor(status, code, message, doc) {
    super(message);
    this.status = status;
    this.code = code;
    this.doc = doc;
  }
}

let unauthorized = () => {};

/** What to do when a request comes back 401 (the session expired or was never made). */
export function onUnauthorized(fn) { unauthorized = fn; }

export function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return null;
}

export async function call(method, path, body) {
  const headers = {Accept: "application/json"};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") {
    const csrf = cookie("gb_csrf");
    if (csrf) headers["X-CSRF-Token"] = csrf;
  }
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "unreachable", "the daemon cannot be reached (stopped, or the tunnel is down)");
  }
  let doc = null;
  if (response.status !== 204) {
    try { doc = await response.json(); } catch (e) { doc = null; }
  }
  if (response.status === 401 && path !== "/v1/session") unauthorized();
  if (!response.ok) {
    const err = (doc && doc.error) || {};
    throw new ApiError(response.status, err.code || "http", err.message || `HTTP ${response.status}`, doc);
  }
  return doc;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body === undefined ? {} : body);
export const del = (path) => call("DELETE", path);

/** Every page of a paginated listing (``key`` names its array), up to ``max`` items. */
export async function all(path, key, max = 20000) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const doc = await get(cursor ? `${path}${sep}cursor=${encodeURIComponent(cursor)}` : path);
    items.push(...doc[key]);
    cursor = doc.next_cursor;
  } while (cursor && items.length < max);
  return items;
}
