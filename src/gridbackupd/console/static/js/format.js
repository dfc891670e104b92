// Numbers, times and paths as a person reads them.

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = Number(n), i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}`;
}

export function count(n) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US");
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  let s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hr = Math.floor(s / 3600); s -= hr * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return hr ? `${d} d ${hr} h` : `${d} d`;
  if (hr) return m ? `${hr} h ${m} min` : `${hr} h`;
  return s ? `${m} min ${s} s` : `${m} min`;
}

function pad(n) { return String(n).padStart(2, "0"); }

/** A Unix time (seconds) as local "YYYY-MM-DD HH:MM:SS". */
export function time(t) {
  if (t === null || t === undefined) return "–";
  const d = new Date(t * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function ago(t) {
  if (t === null || t === undefined) return "–";
  return `${duration(Date.now() / 1000 - t)} ago`;
}

export function rate(bytesPerSecond) {
  if (!bytesPerSecond) return "0 B/s";
  return `${bytes(bytesPerSecond)}/s`;
}

/** A file mode as ls shows it, e.g. -rw-r--r--. */
export function mode(m, kind) {
  if (m === null || m === undefined) return "–";
  const first = {dir: "d", symlink: "l", fifo: "p", socket: "s", chardev: "c", blockdev: "b"}[kind] || "-";
  const rwx = ["r", "w", "x"];
  let out = first;
  for (let i = 8; i >= 0; i--) out += (m >> i) & 1 ? rwx[(8 - i) % 3] : "-";
  return `${out} (${(m & 0o7777).toString(8).padStart(4, "0")})`;
}

export function nsTime(ns) {
  if (ns === null || ns === undefined) return "–";
  return time(Number(ns) / 1e9);
}

// Raw path bytes: the API gives `path` (U+FFFD for bad bytes) and, for a
// name that is not UTF-8, `path_b64` with the exact bytes.

export function b64ToBytes(b64) {
  const bin = atob(b64.replace(/-/g, "+").replace(/_/g, "/"));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function bytesToB64(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

const strict = new TextDecoder("utf-8", {fatal: true});

/** Bytes as text: UTF-8 where valid, \xNN for each byte that is not (as the CLI shows them). */
export function shownBytes(bytes) {
  let out = "", i = 0;
  while (i < bytes.length) {
    const b = bytes[i];
    const len = b < 0x80 ? 1 : (b >> 5) === 6 ? 2 : (b >> 4) === 14 ? 3 : (b >> 3) === 30 ? 4 : 0;
    if (len && i + len <= bytes.length) {
      try {
        out += strict.decode(bytes.subarray(i, i + len));
        i += len;
        continue;
      } catch (e) { /* not valid: escape this byte */ }
    }
    out += `\\x${b.toString(16).padStart(2, "0")}`;
    i += 1;
  }
  return out;
}

/** How to show an entry's path (or a path-like object {path, path_b64}). */
export function shownPath(entry) {
  if (entry.path_b64) return shownBytes(b64ToBytes(entry.path_b64));
  return entry.path;
}

/** The last name of a path. */
export function basename(p) {
  if (p === "/") return "/";
  const i = p.replace(/\/+$/, "").lastIndexOf("/");
  return p.slice(i + 1);
}

/** Query arguments naming an entry's path exactly. */
export function pathQuery(entry) {
  return entry.path_b64 ? {path_b64: entry.path_b64} : {path: entry.path};
}

export function query(args) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(args)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
}

/** bytes() without trailing zeros, for an axis: "2 MiB", "1.5 MiB". */
export function bytesShort(n) {
  return bytes(n).replace(/(\.\d*?)0+ /, "$1 ").replace(/\. /, " ");
}
