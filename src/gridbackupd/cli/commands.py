"""
The ``gridbackup`` commands that talk to the daemon: each takes a
``Client``, the parsed arguments and the output stream, and returns an exit
code (or raises ``Exit``).
"""

import http.client
import itertools
import json
import os
import time
import urllib.parse

from gridbackupd.cli.browser import open_browser
from gridbackupd.cli.client import FAILED, OK, POLL, USAGE, Exit, listener, path_query, raise_error
from gridbackupd.cli.render import (
    Progress,
    bar,
    human_bytes,
    local_time,
    mode_string,
    plan_lines,
    raw_path,
    restore_progress,
    snapshot_lines,
    status_lines,
    upload_progress,
)


def snapshot_path(path):
    """A path inside a snapshot: absolute, relative ones taken from the current directory."""
    return os.path.normpath(os.path.abspath(path)) if path != "/" else "/"


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
            out.write(f"restore {r['id']}: {restore_progress(r, tty)}\n")
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
            return upload_progress(client.call("GET", "/v1/status").get("upload") or {}, tty)
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


def cmd_show(client, args, out):
    snap = client.call("GET", f"/v1/snapshots/{urllib.parse.quote(args.snapshot)}")
    if args.json:
        json.dump(snap, out, indent=1, sort_keys=True)
        out.write("\n")
        return OK
    for line in snapshot_lines(snap):
        out.write(line + "\n")
    return OK


def cmd_history(client, args, out):
    """Every version of one path: the snapshots in which it was added, changed or deleted."""
    query = path_query(snapshot_path(args.path))
    if args.host:
        query += "&host=" + urllib.parse.quote(args.host)
    doc = client.call("GET", "/v1/history?" + query)
    if args.json:
        json.dump(doc, out, indent=1, sort_keys=True)
        out.write("\n")
        return OK
    out.write(f"{'SNAPSHOT':<34} {'TIME':<19} {'CHANGE':<8} {'SIZE':>10} {'MTIME':<16}\n")
    for v in doc.get("versions", []):
        mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(v.get("mtime_ns", 0) / 1e9))
        size = "-" if v.get("change") == "deleted" else human_bytes(v.get("size"))
        out.write(f"{v['snapshot']:<34} {local_time(v.get('time')):<19} {v['change']:<8} {size:>10} "
                  f"{mtime:<16}" + ("" if v.get("complete") else " (incomplete)") + "\n")
    if not doc.get("versions"):
        out.write("no version of this path in any snapshot\n")
    if doc.get("uncounted"):
        out.write(f"({doc['uncounted']} snapshots are still being indexed: "
                  "their changes are not listed yet)\n")
    return OK


def cmd_ls(client, args, out):
    path = snapshot_path(args.path) if args.path else "/"
    query = path_query(path) + ("&recursive=true" if args.recursive else "")
    top: dict = {}
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
            # Above the backed-up paths: a directory on the way, not itself backed up.
            line = f"{'d':<10} {'-':>12} {'(not backed up)':<16} ".encode() + name
        else:
            mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.get("mtime_ns", 0) / 1e9))
            line = (f"{mode_string(e)} {e.get('size', 0):>12} {mtime} ").encode() + name
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
        return restore_progress(r, tty)

    r = follow(client, f"/v1/restores/{restore_id}", out,
               lambda r: r["state"] in ("done", "failed", "cancelled"), describe,
               f"stopped waiting; restore {restore_id} goes on "
               f"('gridbackup cancel {restore_id}' stops it)")
    if r.get("plan") is not None:
        for line in plan_lines(r["plan"], r.get("pending") or []):
            out.write(line + "\n")
        summary = f"restore {restore_id}: {r['state']}, dry run: nothing written"
    else:
        summary = (f"restore {restore_id}: {r['state']}, {r.get('files_done', 0)}/{r.get('files_total', 0)} files, "
                   f"{human_bytes(r.get('bytes_done'))} into {request['target']}")
        if r.get("unchanged"):
            summary += f" ({r['unchanged']} already there and unchanged)"
        if r.get("files_verified") is not None:
            summary += f"; {r['files_verified']} files verified"
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
    status, doc = client.answer("POST", "/v1/forget", request)
    if status >= 400:
        if (doc.get("error") or {}).get("code") == "no_policy":
            # A configuration matter (exit 2), and the way to set one.
            raise Exit(USAGE, "no retention policy is configured: add one to the daemon's configuration, "
                              "e.g. '[retention]' with 'keep_daily = 7' and 'keep_weekly = 4', and restart "
                              "it; or name the snapshots to forget")
        raise_error(status, doc, "this daemon cannot forget snapshots (no /v1/forget)")
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
    for job in jobs:  # as the API lists them: newest first
        when = job["finished"] or job["started"] or job["requested"]
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
        out.write(f"{job['id']}  {job['kind']:<7} {job['state']:<8} {stamp}"
                  f"{'  ' + job['error'] if job.get('error') else ''}\n")
    return OK


def cmd_ui(client, args, out, config):
    """
    A one-time sign-in URL for the web console (first line of stdout), and a
    browser opened on it where there is a screen.  The token itself never
    goes into the URL: the code is spent at the first use and lasts 5 minutes.
    """
    kind, *where = listener(config)[1]
    if kind != "tcp":
        raise Exit(FAILED, f"the daemon listens only on a unix socket ({where[0]}); the console needs a TCP "
                           "listener: set [api] listen = tcp:7234:interface=127.0.0.1, or tunnel the socket "
                           "(ssh -L 7234:SOCKET host) and open http://127.0.0.1:7234/")
    host, port = where
    r = client.call("POST", "/v1/ui/code", missing="this daemon has no web console (its API has no /v1/ui/code)")
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}{r['path']}"
    out.write(url + "\n")
    out.write("open it within 5 minutes; it works once (from another machine: "
              f"ssh -L {port}:127.0.0.1:{port} this-host, then open it there)\n")
    out.flush()
    if not args.no_browser:
        open_browser(url)
    return OK


def cmd_notify(client, args, out):
    """``notify test``: a test event to every target, each one's result; ``notify list``: the recent."""
    missing = "this daemon has no notifications (no /v1/notifications)"
    if args.notify_command == "list":
        doc = client.call("GET", "/v1/notifications", missing=missing)
        for n in doc["notifications"]:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(n["time"]))
            sent = ", ".join(f"{name} {d['state']}" for name, d in sorted(n["deliveries"].items()))
            out.write(f"{stamp}  {n['event']:<17} {n['message']}" + (f"  [{sent}]" if sent else "") + "\n")
        return OK
    results = client.call("POST", "/v1/notifications/test", missing=missing)["results"]
    for name, r in sorted(results.items()):
        out.write(f"{name} ({r['where']}): " + ("sent" if r["ok"] else f"FAILED: {r['error']}") + "\n")
    return OK if all(r["ok"] for r in results.values()) else FAILED
