"""
What the ``gridbackup`` command shows a person: sizes, ages, progress bars
and lines, modes, paths, the status summary.  Progress is redrawn in place
only on a terminal; elsewhere it is plain lines, so a pipe or a log never
sees ``\\r``.
"""

import base64
import shutil
import time

PLAIN_EVERY = 5.0


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


def raw_path(doc, field="path"):
    if field + "_b64" in doc:
        return base64.b64decode(doc[field + "_b64"])
    return doc[field].encode("utf-8")


def mode_string(doc):
    """``ls -l``'s first column for an entry: its kind and permission bits."""
    kinds = {"dir": "d", "symlink": "l", "fifo": "p", "socket": "s", "chardev": "c",
             "blockdev": "b", "hardlink": "h"}
    mode = doc.get("mode", 0)
    text = kinds.get(doc.get("kind"), "-")
    for shift in (6, 3, 0):
        bits = (mode >> shift) & 7
        text += ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")
    return text


# -- commands ------------------------------------------------------------------


def upload_progress(upload, tty):
    """``backup --wait`` while its snapshot uploads: what is left, and why it waits if uploads are paused."""
    pending, done = upload.get("pending_bytes", 0), upload.get("uploaded_bytes", 0)
    text = f"uploading: {human_bytes(pending)} to go"
    if upload.get("paused"):
        text = f"{paused_line(upload)}: {human_bytes(pending)} to go"
    return text + ("  " + bar(done, done + pending) if tty else "")


def paused_line(upload):
    """Who holds uploads, and what lets them go again."""
    by = upload.get("paused_by") or "user"
    if by == "user":
        return "uploads paused by user (kept across restarts): 'gridbackup resume' starts them again"
    return f"uploads paused by {by}: {upload.get('paused_reason') or 'until it allows them'}"


def restore_progress(r, tty):
    """A queued or running restore's progress; no 0/0 before its totals are known."""
    if r.get("waiting_for"):
        return f"{r['state']}: waiting for the {r['waiting_for']}"
    if not r.get("files_total"):
        return "queued" if r["state"] == "queued" else f"{r['state']}: reading the snapshot"
    text = (f"{r['state']}: {r.get('files_done', 0)}/{r['files_total']} files, "
            f"{human_bytes(r.get('bytes_done'))} of {human_bytes(r.get('bytes_total'))}")
    if tty and r.get("bytes_total"):
        text += "  " + bar(r.get("bytes_done", 0), r["bytes_total"])
    return text


def plan_lines(plan, pending):
    """``restore --dry-run``: what the restore would write and fetch."""
    lines = [
        f"would restore {plan.get('files', 0)} files, {human_bytes(plan.get('bytes'))}",
        f"  from {plan.get('packs', 0)} packs in {plan.get('gets', 0)} ranged GETs "
        f"({human_bytes(plan.get('fetch_bytes'))}); {plan.get('inline_files', 0)} files held in the index",
    ]
    entries = plan.get("entries") or {}
    if entries:
        lines.append("  entries: " + ", ".join(f"{n} {kind}" for kind, n in entries.items()))
    lines.append(f"  pending (not uploaded yet): {plan.get('pending_files', len(pending))} files")
    for p in pending[:10]:
        lines.append(f"    {p.get('path')}: {p.get('reason')}")
    if len(pending) > 10:
        lines.append(f"    ... and {len(pending) - 10} more")
    return lines


def snapshot_lines(snap):
    """``gridbackup show``: a snapshot, its figures against the one before, and its errors."""
    lines = [
        f"snapshot {snap['id']}: {snap['state']}" + ("" if snap.get("complete") else " (not complete)"),
        f"  kind: {snap.get('kind') or '-'}    host: {snap.get('host', '?')}",
        f"  time: {local_time(snap.get('time'))}    finished: {local_time(snap.get('finished'))}",
        f"  files: {snap.get('files', 0)}    size: {human_bytes(snap.get('bytes'))}",
        f"  paths: {', '.join(snap.get('paths') or []) or '-'}",
    ]
    if snap.get("tags"):
        lines.append(f"  tags: {', '.join(snap['tags'])}")
    figures = snap.get("figures")
    if figures:
        since = f"since {figures['parent']}" if figures.get("parent") else "(the first snapshot)"
        lines.append(f"  changes {since}: {figures.get('files_added', 0)} files added, "
                     f"{figures.get('files_changed', 0)} changed, {figures.get('files_deleted', 0)} deleted; "
                     f"{human_bytes(figures.get('bytes_added'))} added, "
                     f"{human_bytes(figures.get('bytes_deleted'))} deleted")
    errors = snap.get("errors") or []
    lines.append(f"  errors: {len(errors)}")
    for e in errors:
        lines.append(f"    {e.get('path') or '-'}: {e.get('reason')}")
    return lines


def offsite_warning(grid):
    """One line when the grid is only on this machine: its disk lost, the backup goes with it."""
    if grid.get("offsite") is False:
        return ["warning: the grid is only on this machine, not an off-site backup "
                "(README.md, \"Backing up off-site\")"]
    return []


def watch_lines(watch, protected_as_of):
    """The watch over the backup paths and up to when changes are protected (one line each)."""
    if not watch:
        return []
    state = watch.get("state")
    text = f"watch: {state}"
    if state in ("starting", "watching", "degraded"):
        text += f", {watch.get('directories', 0):,} directories"
    if watch.get("reason"):
        text += f" ({watch['reason']})"
    lines = [text]
    if protected_as_of is not None:
        age = time.time() - protected_as_of
        lines.append("protected as of: now" if age < 2 else f"protected as of: {human_age(age)}")
    return lines


def status_lines(status, tty):
    lines = []
    grid = status.get("grid") or {}
    connected = grid.get("servers_connected")
    lines.append(f"daemon: {status.get('state')}    grid: {connected if connected is not None else '?'}"
                 f"/{grid.get('servers_needed', '?')} storage servers connected"
                 + (" (embedded)" if grid.get("embedded") else ""))
    if grid.get("error"):
        lines.append(f"grid problem: {grid['error']}")
    for warning in status.get("warnings") or []:
        lines.append(f"configuration warning: {warning}")
    lines.extend(offsite_warning(grid))
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
    lines.extend(watch_lines(status.get("watch"), status.get("protected_as_of")))
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
        if upload.get("paused"):
            lines.append(paused_line(upload))
        if upload.get("last_error"):
            lines.append(f"upload problem: {upload['last_error']}")
    else:
        lines.append("upload: not started (waiting for the grid)")
    return lines
