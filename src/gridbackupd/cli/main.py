"""
The ``gridbackup`` command: a person's (and a script's) client of the API.

It finds the daemon from the daemon's own configuration file (``--config``,
else ``$GRIDBACKUP_CONFIG``, else /etc/gridbackup/gridbackup.ini): the
endpoint the daemon wrote to ``state_dir/api_endpoint`` (``[api] listen`` if
it has not written one) and the token in ``state_dir/private/api_token``.
It is a plain synchronous program on the standard library (http.client):
no reactor.

Exit codes: 0 success, 1 the operation failed, 2 usage (a bad command line
or configuration), 3 the daemon cannot be reached.  Every failure prints one
line on stderr.  Progress bars are drawn only when stdout is a terminal;
otherwise progress is plain lines, so a pipe or a log never sees ``\\r``.
"""

import argparse
import base64
import http.client
import itertools
import json
import os
import re
import shutil
import socket
import sys
import time
import urllib.parse

DEFAULT_CONFIG = "/etc/gridbackup/gridbackup.ini"
ENV_CONFIG = "GRIDBACKUP_CONFIG"
OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3
TIMEOUT = 60.0
POLL = 0.5
PLAIN_EVERY = 5.0


class Exit(Exception):
    """Stop with this exit code and this one line on stderr."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# -- finding and calling the daemon --------------------------------------------


def _split_endpoint(description):
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
    kind, args = parts[0], parts[1:]
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    return kind, positional, named


def parse_endpoint(description):
    """``("unix", path)`` or ``("tcp", host, port)`` from a Twisted endpoint string."""
    kind, positional, named = _split_endpoint(description.strip())
    if kind == "unix":
        path = positional[0] if positional else named.get("address")
        if not path:
            raise ValueError(f"no socket path in {description!r}")
        return ("unix", path)
    if kind in ("tcp", "tcp6"):
        port = positional[0] if positional else named.get("port")
        host = named.get("interface") or ("::1" if kind == "tcp6" else "127.0.0.1")
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return ("tcp", host, int(port))
    raise ValueError(f"cannot connect to a {kind!r} endpoint ({description!r})")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Client:
    """Calls the API: JSON in, JSON out; raises Exit on anything else."""

    def __init__(self, endpoint, token, where=""):
        self.endpoint = endpoint
        self.token = token
        self.where = where or ":".join(str(p) for p in endpoint)

    def _connection(self):
        if self.endpoint[0] == "unix":
            return _UnixConnection(self.endpoint[1], TIMEOUT)
        return http.client.HTTPConnection(self.endpoint[1], self.endpoint[2], timeout=TIMEOUT)

    def open(self, method, path, body=None):
        """Send a request; return (connection, response) with the body unread."""
        conn = self._connection()
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            return conn, conn.getresponse()
        except (ConnectionError, FileNotFoundError, socket.timeout, OSError) as e:
            conn.close()
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise Exit(UNREACHABLE, f"cannot reach the daemon at {self.where}: {reason} "
                                    "(is gridbackupd running?)")

    def call(self, method, path, body=None, missing=None):
        """The answer's JSON document; a 4xx/5xx becomes Exit(1) with the daemon's message."""
        conn, response = self.open(method, path, body)
        try:
            raw = response.read()
        except (ConnectionError, socket.timeout, OSError) as e:
            raise Exit(UNREACHABLE, f"the daemon at {self.where} stopped answering: {e}")
        finally:
            conn.close()
        try:
            doc = json.loads(raw)
        except ValueError:
            raise Exit(FAILED, f"the daemon answered {response.status} with something that is not JSON")
        if response.status >= 400:
            raise_error(response.status, doc, missing)
        return doc


def raise_error(status, doc, missing=None):
    error = doc.get("error", {}) if isinstance(doc, dict) else {}
    code = error.get("code", "")
    if status == 404 and code == "not_found" and missing:
        raise Exit(FAILED, missing)
    if status == 401:
        raise Exit(FAILED, "the daemon refused the API token: is this the right --config?")
    raise Exit(FAILED, error.get("message") or f"the daemon answered {status}")


def load_config(path):
    from gridbackupd.config import parse_config
    from gridbackupd.errors import ConfigError

    try:
        return parse_config(path)
    except ConfigError as e:
        raise Exit(USAGE, str(e))


def read_secret(path, what):
    try:
        with open(path) as f:
            value = f.read().strip()
    except FileNotFoundError:
        raise Exit(FAILED, f"{path} does not exist: has the daemon ever started with this configuration?")
    except PermissionError:
        raise Exit(FAILED, f"cannot read {what} in {path}: permission denied "
                           "(run gridbackup as the daemon's user, or as root)")
    except OSError as e:
        raise Exit(FAILED, f"cannot read {what} in {path}: {e.strerror}")
    if not value:
        raise Exit(FAILED, f"{path} is empty")
    return value


def make_client(config):
    endpoint_file = config.statedir.api_endpoint
    try:
        with open(endpoint_file) as f:
            description = f.read().strip()
    except OSError:
        description = config.api_listen
    try:
        endpoint = parse_endpoint(description)
    except (ValueError, IndexError) as e:
        raise Exit(USAGE, f"{config.path}: [api] listen: {e}")
    if endpoint[0] == "tcp" and endpoint[2] == 0:
        raise Exit(UNREACHABLE, f"the daemon has not written {endpoint_file} (is gridbackupd running?)")
    token = read_secret(config.statedir.api_token, "the API token")
    return Client(endpoint, token, description)


# -- output --------------------------------------------------------------------


def human_bytes(n):
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def human_age(seconds):
    if seconds is None:
        return "?"
    seconds = int(seconds)
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return f"{seconds} seconds ago"


def local_time(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def bar(done, total, width=24):
    if not total:
        return ""
    fraction = max(0.0, min(1.0, done / total))
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:5.1f}%"


class Progress:
    """One line redrawn in place on a terminal; plain lines, now and then, elsewhere."""

    def __init__(self, out, tty=None):
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.last_text = None
        self.last_time = 0.0
        self.drawn = False

    def show(self, text):
        if self.tty:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            self.out.write("\r" + text[:width].ljust(width))
            self.out.flush()
            self.drawn = True
            return
        now = time.monotonic()
        if text != self.last_text and now - self.last_time >= PLAIN_EVERY:
            self.out.write(text + "\n")
            self.out.flush()
            self.last_text = text
            self.last_time = now

    def done(self):
        """Clear the progress line (on a terminal), so the summary takes its place."""
        if self.tty and self.drawn:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            self.out.write("\r" + " " * width + "\r")
            self.out.flush()
            self.drawn = False


def display_path(doc, field="path"):
    """A path from the API as text for a person (the replacement char marks bytes that are not UTF-8)."""
    return doc.get(field, "")


def raw_path(doc, field="path"):
    if field + "_b64" in doc:
        return base64.b64decode(doc[field + "_b64"])
    return doc[field].encode("utf-8")


def path_query(path):
    """The query for one snapshot path given on the command line (bytes as the OS gave them)."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "path_b64=" + urllib.parse.quote(base64.urlsafe_b64encode(raw).decode("ascii"))
    return "path=" + urllib.parse.quote(raw, safe="/")


def snapshot_path(path):
    """A path inside a snapshot: absolute, relative ones taken from the current directory."""
    return os.path.normpath(os.path.abspath(path)) if path != "/" else "/"


def _mode_string(doc):
    kinds = {"dir": "d", "symlink": "l", "fifo": "p", "socket": "s", "chardev": "c",
             "blockdev": "b", "hardlink": "h"}
    mode = doc.get("mode", 0)
    text = kinds.get(doc.get("kind"), "-")
    for shift in (6, 3, 0):
        bits = (mode >> shift) & 7
        text += ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")
    return text


# -- commands ------------------------------------------------------------------


def status_lines(status, tty):
    lines = []
    grid = status.get("grid") or {}
    connected = grid.get("servers_connected")
    lines.append(f"daemon: {status.get('state')}    grid: {connected if connected is not None else '?'}"
                 f"/{grid.get('servers_needed', '?')} storage servers connected"
                 + (" (embedded)" if grid.get("embedded") else ""))
    if grid.get("error"):
        lines.append(f"grid problem: {grid['error']}")
    last = status.get("last_snapshot")
    if last:
        lines.append(f"last complete snapshot: {last['id']}, {human_age(last.get('age_seconds'))} "
                     f"({last.get('files')} files, {human_bytes(last.get('bytes'))})")
    else:
        lines.append("last complete snapshot: none yet")
    scan = status.get("scan") or {}
    if scan.get("running"):
        text = (f"scan: {scan.get('snapshot')}: {scan.get('entries', 0)} entries, "
                f"{human_bytes(scan.get('bytes_hashed'))} read, {scan.get('errors', 0)} errors")
        total = (last or {}).get("files")
        if tty and total:
            text += "  " + bar(scan.get("files", 0), total) + " (of the last snapshot's files)"
        lines.append(text)
    else:
        lines.append("scan: idle")
    upload = status.get("upload")
    if upload:
        pending, done = upload.get("pending_bytes", 0), upload.get("uploaded_bytes", 0)
        text = (f"upload: {upload.get('pending_blobs', 0)} blobs ({human_bytes(pending)}) waiting, "
                f"{human_bytes(done)} uploaded, {human_bytes(upload.get('rate_bytes_per_second'))}/s")
        if upload.get("eta_seconds"):
            text += f", about {int(upload['eta_seconds'])} s left"
        if upload.get("paused"):
            text += " (paused)"
        if tty and pending:
            text += "  " + bar(done, done + pending)
        lines.append(text)
        if upload.get("last_error"):
            lines.append(f"upload problem: {upload['last_error']}")
    else:
        lines.append("upload: not started (waiting for the grid)")
    return lines


def cmd_status(client, args, out):
    status = client.call("GET", "/v1/status")
    if args.json:
        json.dump(status, out, indent=1, sort_keys=True)
        out.write("\n")
        return OK
    tty = out.isatty()
    for line in status_lines(status, tty):
        out.write(line + "\n")
    restores = client.call("GET", "/v1/restores").get("restores", [])
    for r in restores:
        if r.get("state") in ("queued", "running"):
            text = (f"restore {r['id']}: {r['state']}, {r.get('files_done', 0)}/{r.get('files_total', 0)} files, "
                    f"{human_bytes(r.get('bytes_done'))} of {human_bytes(r.get('bytes_total'))}")
            if tty and r.get("bytes_total"):
                text += "  " + bar(r.get("bytes_done", 0), r["bytes_total"])
            out.write(text + "\n")
    return OK


def follow(client, path, out, ended, describe, interrupted=None):
    """
    Poll ``path`` until ``ended(doc)``, showing ``describe(doc, tty)`` as
    progress in between; the last document.  Ctrl-C stops waiting (with
    ``interrupted`` as the message, if given) and leaves the work going on.
    """
    progress = Progress(out)
    try:
        while True:
            doc = client.call("GET", path)
            if ended(doc):
                break
            progress.show(describe(doc, progress.tty))
            time.sleep(POLL)
    except KeyboardInterrupt:
        progress.done()
        if interrupted is None:
            raise
        raise Exit(FAILED, interrupted)
    progress.done()
    return doc


def cmd_backup(client, args, out):
    snapshot_id = client.call("POST", "/v1/backups")["id"]
    out.write(snapshot_id + "\n")
    out.flush()
    if not args.wait:
        return OK

    def describe(snap, tty):
        state = snap["state"]
        if state == "scanning" and snap.get("progress"):
            p = snap["progress"]
            return f"scanning: {p.get('entries', 0)} entries, {human_bytes(p.get('bytes_hashed'))} read"
        if state == "uploading":
            upload = client.call("GET", "/v1/status").get("upload") or {}
            pending, done = upload.get("pending_bytes", 0), upload.get("uploaded_bytes", 0)
            text = f"uploading: {human_bytes(pending)} to go"
            return text + ("  " + bar(done, done + pending) if tty else "")
        return state

    snap = follow(client, f"/v1/snapshots/{snapshot_id}", out,
                  lambda s: s["state"] in ("complete", "incomplete", "failed"), describe)
    state = snap["state"]
    summary = (f"snapshot {snapshot_id}: {state}, {snap.get('files')} files, "
               f"{human_bytes(snap.get('bytes'))}, {snap.get('error_count', 0)} errors")
    if state == "complete":
        out.write(summary + "\n")
        return OK
    raise Exit(FAILED, summary)


def _pages(client, path, key, query="", first=None):
    """The items of every page of a listing; ``first(doc)`` sees the first page's document."""
    cursor = None
    while True:
        q = query + (("&" if query else "") + "cursor=" + urllib.parse.quote(cursor) if cursor else "")
        doc = client.call("GET", path + ("?" + q if q else ""))
        if first is not None and cursor is None:
            first(doc)
        yield from doc[key]
        cursor = doc.get("next_cursor")
        if not cursor:
            return


def cmd_snapshots(client, args, out):
    snaps = list(_pages(client, "/v1/snapshots", "snapshots"))
    if args.json:
        json.dump(snaps, out, indent=1)
        out.write("\n")
        return OK
    out.write(f"{'ID':<34} {'TIME':<19} {'KIND':<11} {'FILES':>8} {'SIZE':>10}  STATE\n")
    for s in snaps:
        out.write(f"{s['id']:<34} {local_time(s.get('time')):<19} {s.get('kind') or '-':<11} "
                  f"{s.get('files', 0):>8} {human_bytes(s.get('bytes')):>10}  {s['state']}"
                  + (f" ({s['errors']} errors)" if s.get("errors") else "") + "\n")
    return OK


def cmd_ls(client, args, out):
    path = snapshot_path(args.path) if args.path else "/"
    query = path_query(path) + ("&recursive=true" if args.recursive else "")
    top = {}
    entries = _pages(client, f"/v1/snapshots/{urllib.parse.quote(args.snapshot)}/files", "entries", query,
                     first=lambda doc: top.update(entry=doc.get("entry")))
    # `ls FILE` shows the file itself, as ls does.
    entries = itertools.chain(entries, _lazy(lambda: [top["entry"]] if (
        top.get("entry") and top["entry"].get("kind") != "dir") else []))
    binary = getattr(out, "buffer", None)
    for e in entries:
        if args.json:
            out.write(json.dumps(e) + "\n")
            continue
        name = raw_path(e)
        if e.get("kind") == "symlink" and "target" in e:
            name += b" -> " + raw_path(e, "target")
        if e.get("virtual"):
            line = b"d?????????" + b" " * 24 + b" " + name
        else:
            mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.get("mtime_ns", 0) / 1e9))
            line = (f"{_mode_string(e)} {e.get('size', 0):>12} {mtime} ").encode() + name
        if binary is not None:
            out.flush()
            binary.write(line + b"\n")
            binary.flush()
        else:
            out.write(line.decode("utf-8", "replace") + "\n")
    return OK


def _lazy(make):
    """An iterator over what ``make()`` returns, called only when it is reached."""
    yield from make()


def cmd_cat(client, args, out):
    path = snapshot_path(args.path)
    conn, response = client.open(
        "GET", f"/v1/snapshots/{urllib.parse.quote(args.snapshot)}/content?" + path_query(path))
    try:
        if response.status != 200:
            try:
                doc = json.loads(response.read())
            except ValueError:
                doc = {}
            raise_error(response.status, doc)
        expected = int(response.getheader("content-length") or -1)
        sink = getattr(out, "buffer", None)
        written = 0
        while True:
            try:
                chunk = response.read(1 << 16)
            except (http.client.IncompleteRead, ConnectionError, OSError):
                chunk = b""
            if not chunk:
                break
            written += len(chunk)
            if sink is not None:
                sink.write(chunk)
            else:
                out.write(chunk.decode("utf-8", "replace"))
        if sink is not None:
            sink.flush()
        if expected >= 0 and written != expected:
            raise Exit(FAILED, f"{path}: the content stopped after {written} of {expected} bytes "
                               "(the daemon's log says why)")
    finally:
        conn.close()
    return OK


def cmd_diff(client, args, out):
    query = path_query(snapshot_path(args.path)) if args.path else ""
    path = f"/v1/snapshots/{urllib.parse.quote(args.a)}/diff/{urllib.parse.quote(args.b)}"
    marks = {"added": "+", "deleted": "-", "changed": "M"}
    binary = getattr(out, "buffer", None)
    count = 0
    for change in _pages(client, path, "changes", query):
        count += 1
        if args.json:
            out.write(json.dumps(change) + "\n")
            continue
        line = marks[change["change"]].encode() + b" " + raw_path(change)
        if binary is not None:
            out.flush()
            binary.write(line + b"\n")
        else:
            out.write(line.decode("utf-8", "replace") + "\n")
    if binary is not None:
        binary.flush()
    return OK


def cmd_restore(client, args, out):
    if not args.target:
        raise Exit(USAGE, "restore needs --target DIR (where the files are written)")
    request = {"snapshot": args.snapshot, "target": os.path.abspath(args.target),
               "paths": [snapshot_path(p) for p in args.paths], "overwrite": args.overwrite}
    # Only the options asked for, so that an older daemon still takes the request.
    if args.dry_run:
        request["dry_run"] = True
    if args.verify:
        request["verify"] = True
    restore_id = client.call("POST", "/v1/restores", request)["id"]
    out.write(restore_id + "\n")
    out.flush()
    if args.no_wait:
        return OK

    def describe(r, tty):
        text = (f"{r['state']}: {r.get('files_done', 0)}/{r.get('files_total', 0)} files, "
                f"{human_bytes(r.get('bytes_done'))} of {human_bytes(r.get('bytes_total'))}")
        if tty and r.get("bytes_total"):
            text += "  " + bar(r.get("bytes_done", 0), r["bytes_total"])
        return text

    r = follow(client, f"/v1/restores/{restore_id}", out,
               lambda r: r["state"] in ("done", "failed", "cancelled"), describe,
               f"stopped waiting; restore {restore_id} goes on "
               f"('gridbackup cancel {restore_id}' stops it)")
    summary = (f"restore {restore_id}: {r['state']}, {r.get('files_done', 0)}/{r.get('files_total', 0)} files, "
               f"{human_bytes(r.get('bytes_done'))} into {request['target']}")
    if r["state"] == "done":
        out.write(summary + "\n")
        return OK
    errors = r.get("errors") or []
    for e in errors[:10]:
        out.write(f"  {e.get('path')}: {e.get('reason')}\n")
    if len(errors) > 10:
        out.write(f"  ... and {len(errors) - 10} more\n")
    raise Exit(FAILED, f"{summary}; {len(errors)} errors")


def cmd_cancel(client, args, out):
    r = client.call("DELETE", f"/v1/restores/{urllib.parse.quote(args.restore_id)}",
                    missing="this daemon cannot cancel restores (its API has no DELETE /v1/restores/ID)")
    out.write(f"restore {args.restore_id}: {r.get('state', 'cancelled')}\n")
    return OK


def cmd_pause(client, args, out):
    client.call("POST", "/v1/uploads/pause",
                missing="this daemon cannot pause uploads (its API has no /v1/uploads/pause)")
    out.write("uploads paused (scans go on); 'gridbackup resume' starts them again\n")
    return OK


def cmd_resume(client, args, out):
    client.call("POST", "/v1/uploads/resume",
                missing="this daemon cannot pause uploads (its API has no /v1/uploads/resume)")
    out.write("uploads resumed\n")
    return OK


def cmd_take_over(client, args, out):
    doc = client.call("POST", "/v1/uploads/take-over",
                      missing="this daemon cannot take over the writer lock (no /v1/uploads/take-over)")
    if doc.get("taken_from"):
        out.write(f"this daemon now writes the backup set (the lock of {doc['taken_from']} was taken over)\n")
    else:
        out.write("this daemon writes the backup set\n")
    return OK


def cmd_recover(config, args, out):
    """
    Put a root cap in place (``--rootcap-file``) and follow the daemon's
    rebuild of its state from the grid, which it does when it starts with a
    root cap and no database.
    """
    cap_path = config.statedir.rootcap
    if args.rootcap_file:
        install_rootcap(cap_path, args.rootcap_file)
    elif not os.path.exists(cap_path):
        raise Exit(FAILED, f"no root cap in {cap_path}: give it with --rootcap-file FILE (or - for stdin)")
    try:
        client = make_client(config)
        doc = client.call("GET", "/v1/status")
    except Exit as e:
        if e.code != UNREACHABLE:
            raise
        out.write(f"The root cap is in {cap_path}. Start the daemon now (systemctl start gridbackup,\n"
                  "or make run): with no state.sqlite it rebuilds its state from the grid before\n"
                  "its first scan. Then run `gridbackup recover` again to see what it found.\n")
        return OK
    progress = Progress(out)
    while doc.get("state") in ("starting", "waiting-for-grid", "recovering"):
        progress.show(f"{doc.get('state')}...")
        time.sleep(POLL)
        doc = client.call("GET", "/v1/status")
    progress.done()
    report = doc.get("recovery")
    if report is None:
        raise Exit(FAILED, "the daemon already had local state, so it did not recover: to rebuild it, "
                           "stop the daemon, move state_dir/state.sqlite away and start it again")
    out.write(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return OK


def install_rootcap(cap_path, source):
    """Write a root cap given by a person to private/rootcap (0600), never over another one."""
    try:
        text = sys.stdin.read() if source == "-" else open(source).read()
    except OSError as e:
        raise Exit(FAILED, f"cannot read {source}: {e.strerror}")
    cap = text.strip()
    if not cap.startswith("URI:DIR2") or any(c.isspace() for c in cap):
        raise Exit(FAILED, f"{source} does not hold a directory cap (URI:DIR2:... or URI:DIR2-RO:...)")
    existing = None
    if os.path.exists(cap_path):
        existing = read_secret(cap_path, "the root cap")
    if existing is not None and existing != cap:
        raise Exit(FAILED, f"{cap_path} already holds another root cap; move it away first")
    os.makedirs(os.path.dirname(cap_path), mode=0o700, exist_ok=True)
    fd = os.open(cap_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(cap + "\n")
    os.chmod(cap_path, 0o600)


KEY_ADVICE = """\
Keep the root cap offline: on paper, in a password manager, or on a USB stick
in a drawer. Anyone who has it can read (read-write form: also delete) every
file in this backup; without it nobody, you included, can restore anything.
Never paste it into a chat, a ticket or a log. The read-only form is enough
to list and restore (gridbackup recover on a new machine)."""


def readonly_cap(cap):
    """The read-only form of a cap, computed locally (no grid needed)."""
    from allmydata import uri

    return uri.from_string(cap).get_readonly().to_string().decode("ascii")


def cmd_key_show(config, args, out):
    cap = read_secret(config.statedir.rootcap, "the root cap")
    try:
        ro = readonly_cap(cap)
    except Exception as e:
        ro = f"(cannot derive it: {e})"
    if args.json:
        json.dump({"rootcap": cap, "readonly": ro}, out, indent=1)
        out.write("\n")
        return OK
    out.write(f"read-write: {cap}\nread-only:  {ro}\n\n{KEY_ADVICE}\n")
    return OK


def _wait_job(client, job, out, no_wait):
    """Follow a maintenance job to its end; exit non-zero if it failed or reports failures."""
    out.write(job["id"] + "\n")
    out.flush()
    if no_wait:
        return OK

    def describe(job, tty):
        p = job.get("progress") or {}
        text = f"{job['kind']} {job['state']}"
        if p.get("total"):
            text += f": {p.get('done', 0)}/{p['total']}"
            if tty:
                text += "  " + bar(p.get("done", 0), p["total"])
        return text

    job = follow(client, f"/v1/jobs/{urllib.parse.quote(job['id'])}", out,
                 lambda j: j["state"] not in ("queued", "running"), describe,
                 f"stopped waiting; job {job['id']} goes on")
    out.write(json.dumps(job["result"], indent=1, sort_keys=True) + "\n")
    if job["state"] != "done":
        raise Exit(FAILED, f"{job['kind']} job {job['id']} failed: {job.get('error')}")
    if job["result"].get("failed") or job["result"].get("unrecoverable"):
        raise Exit(FAILED, f"{job['kind']} job {job['id']} found problems (see above)")
    return OK


def cmd_forget(client, args, out):
    request = {"dry_run": args.dry_run, "prune": not args.no_prune}
    if args.snapshots:
        request["snapshots"] = args.snapshots
    doc = client.call("POST", "/v1/forget", request,
                      missing="this daemon cannot forget snapshots (no /v1/forget)")
    for snapshot_id in doc["forget"]:
        out.write(f"{'would forget' if args.dry_run else 'forget'} {snapshot_id}\n")
    for kept in doc["keep"]:
        out.write(f"keep {kept['id']} ({', '.join(kept['reasons'])})\n")
    for snapshot_id in doc["rewrite_full"]:
        out.write(f"rewrite {snapshot_id} as a full log (its parent goes)\n")
    if args.dry_run:
        if doc.get("prune"):
            p = doc["prune"]
            out.write(f"prune: {p['dead_blobs']} blobs, {p['packs_dropped']} packs dropped "
                      f"({human_bytes(p['bytes_dropped'])}), {p['packs_repacked']} repacked\n")
        return OK
    return _wait_job(client, doc["job"], out, args.no_wait)


def cmd_job(client, args, out):
    options = {}
    if args.kind == "check" and args.verify is not None:
        options["verify_fraction"] = args.verify
    if args.kind == "drill" and args.files:
        options["files"] = args.files
    job = client.call("POST", "/v1/jobs", {"kind": args.kind, "options": options},
                      missing="this daemon has no maintenance jobs (no /v1/jobs)")
    return _wait_job(client, job, out, args.no_wait)


def cmd_jobs(client, args, out):
    jobs = client.call("GET", "/v1/jobs", missing="this daemon has no maintenance jobs (no /v1/jobs)")["jobs"]
    for job in reversed(jobs):
        when = job["finished"] or job["started"] or job["requested"]
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
        out.write(f"{job['id']}  {job['kind']:<7} {job['state']:<8} {stamp}"
                  f"{'  ' + job['error'] if job.get('error') else ''}\n")
    return OK


# -- the command line ------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise Exit(USAGE, f"{message} (see '{self.prog} --help')")


def build_parser():
    parser = _Parser(prog="gridbackup", description="Drive the gridbackupd daemon.")
    parser.add_argument("--config", help=f"the daemon's configuration (default: ${ENV_CONFIG}, "
                                         f"else {DEFAULT_CONFIG})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    p = commands.add_parser("status", help="what the daemon is doing")
    p.add_argument("--json", action="store_true", help="the API's answer as it is")
    p = commands.add_parser("backup", help="start a backup now")
    p.add_argument("--wait", action="store_true", help="wait until it is complete, with progress")
    p = commands.add_parser("snapshots", help="list the snapshots, oldest first")
    p.add_argument("--json", action="store_true")
    p = commands.add_parser("ls", help="list a directory of a snapshot")
    p.add_argument("snapshot", help="a snapshot id, or 'latest'")
    p.add_argument("path", nargs="?", help="a directory (default: /)")
    p.add_argument("-r", "--recursive", action="store_true", help="everything below, not just the children")
    p.add_argument("--json", action="store_true", help="one JSON document per line")
    p = commands.add_parser("cat", help="write one file of a snapshot to stdout")
    p.add_argument("snapshot")
    p.add_argument("path")
    p = commands.add_parser("diff", help="what changed between two snapshots")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("path", nargs="?", help="only below this path")
    p.add_argument("--json", action="store_true", help="one JSON document per line")
    p = commands.add_parser("restore", help="restore a snapshot, or some of its paths")
    p.add_argument("snapshot", help="a snapshot id, or 'latest'")
    p.add_argument("paths", nargs="*", metavar="PATH", help="what to restore (default: everything)")
    p.add_argument("--target", help="the directory to restore into")
    p.add_argument("--overwrite", action="store_true", help="replace files that exist in the target")
    p.add_argument("--no-wait", action="store_true", help="print the restore id and return")
    p.add_argument("--dry-run", action="store_true", help="check what would be written, write nothing")
    p.add_argument("--verify", action="store_true", help="read the restored files back and check them")
    p = commands.add_parser("cancel", help="cancel a restore")
    p.add_argument("restore_id")
    commands.add_parser("pause", help="pause uploads")
    commands.add_parser("resume", help="resume uploads")
    commands.add_parser("take-over", help="write the backup set now, though another machine's lock is fresh "
                                          "(only when that machine is gone)")
    p = commands.add_parser("forget", help="forget snapshots by the retention policy (or those named), and prune")
    p.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="forget these (default: apply [retention])")
    p.add_argument("--dry-run", action="store_true", help="say what would go, change nothing")
    p.add_argument("--no-prune", action="store_true", help="forget, but leave the grid's packs as they are")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p = commands.add_parser("job", help="run a maintenance job now: leases, check, drill or prune")
    p.add_argument("kind", choices=["leases", "check", "drill", "prune"])
    p.add_argument("--verify", type=float, metavar="FRACTION",
                   help="check: the fraction of objects whose shares are downloaded and verified")
    p.add_argument("--files", type=int, help="drill: how many files to restore and check")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    commands.add_parser("jobs", help="the recent maintenance jobs")
    p = commands.add_parser("recover", help="rebuild the local state from the grid (on a new machine)")
    p.add_argument("--rootcap-file", metavar="FILE",
                   help="the root cap to recover from (- for stdin), written to state_dir/private/rootcap")
    p = commands.add_parser("key", help="the root cap")
    keys = p.add_subparsers(dest="key_command", metavar="show", parser_class=_Parser)
    keys.required = True
    k = keys.add_parser("show", help="print the root cap, read-write and read-only")
    k.add_argument("--json", action="store_true")
    return parser


COMMANDS = {
    "status": cmd_status, "backup": cmd_backup, "snapshots": cmd_snapshots, "ls": cmd_ls,
    "cat": cmd_cat, "diff": cmd_diff, "restore": cmd_restore, "cancel": cmd_cancel, "pause": cmd_pause,
    "resume": cmd_resume, "take-over": cmd_take_over, "forget": cmd_forget, "job": cmd_job,
    "jobs": cmd_jobs,
}


def main(argv=None, out=None, err=None):
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help
            return e.code if isinstance(e.code, int) else OK
        config = load_config(args.config or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG)
        if args.command == "key":
            return cmd_key_show(config, args, out)
        if args.command == "recover":
            return cmd_recover(config, args, out)
        return COMMANDS[args.command](make_client(config), args, out)
    except Exit as e:
        out.flush()
        err.write(f"gridbackup: {e.message}\n")
        err.flush()
        return e.code
    except KeyboardInterrupt:
        err.write("gridbackup: interrupted\n")
        return FAILED
    except BrokenPipeError:
        # `gridbackup cat ... | head`: the reader went away; nothing more to say.
        try:
            sys.stdout = None
        except Exception:
            pass
        return OK


if __name__ == "__main__":
    sys.exit(main())
