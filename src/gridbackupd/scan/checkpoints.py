"""
A scan's checkpoints, so that a scan killed half-way resumes instead of
starting over: taken every ``CHECKPOINT_SECONDS``, stored in the database
(``state.checkpoints``) with the blobs queued so far, and restored into a
new log file when the scan runs again with the same settings.
"""

import base64
import hashlib
import os
import time

import attr

from gridbackupd import crashpoints
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.logreader import read_partial
from gridbackupd.scan.metadata import display_path
from gridbackupd.state import checkpoints as stored
from gridbackupd.state import db as dbmod
from gridbackupd.state import queue

CHECKPOINT_SECONDS = 15.0


def fingerprint(header, options, previous_logs):
    """What a checkpoint must agree with to be resumed: the same scan, same settings, same parent."""
    text = repr((
        header.snapshot, header.kind, header.parent, header.host, header.paths, header.tags,
        attr.astuple(options), [i for i, _ in previous_logs],
    ))
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()



def drop(conn, snapshot_id, logs_dir=None):
    """Forget a scan's checkpoint, and with ``logs_dir`` delete the files it points at."""
    with dbmod.transaction(conn):
        state = stored.load(conn, snapshot_id)
        stored.drop(conn, snapshot_id)
    if state is not None and logs_dir is not None:
        for name in (state["file"], state["file"] + ".links"):
            try:
                os.unlink(os.path.join(logs_dir, name))
            except FileNotFoundError:
                pass


class Checkpoints:
    """
    A scan's checkpoints: every CHECKPOINT_SECONDS the log written so far
    is made readable (``LogWriter.checkpoint``) and synced, and in one
    transaction the blobs queued so far and the checkpoint (the log file,
    its valid length, the last path, the counters) are committed.  A scan
    killed after that resumes from there.
    """

    def __init__(self, conn, snapshot_id, fingerprint, started, every):
        self.conn = conn
        self.snapshot_id = snapshot_id
        self.fingerprint = fingerprint
        self.started = started
        self.every = every
        self.last = time.monotonic()
        self.count = 0

    def due(self):
        self.count += 1
        if self.count % 256:
            return False
        return time.monotonic() - self.last >= self.every

    def take(self, writer, out, links_out, scanner, progress, batch, resumes):
        offset = writer.checkpoint()
        os.fsync(out.fileno())
        for dev, ino, path in scanner.new_links:
            links_out.write(b"%d %d %s\n" % (dev, ino, base64.b64encode(path)))
        scanner.new_links.clear()
        links_out.flush()
        os.fsync(links_out.fileno())
        state = {
            "fingerprint": self.fingerprint,
            "started": self.started,
            "file": os.path.basename(out.name),
            "offset": offset,
            "links_offset": links_out.tell(),
            "records": writer.records,
            "last_path": base64.b64encode(writer.last_path or b"").decode("ascii"),
            "has_last": writer.last_path is not None,
            "progress": {
                k: getattr(progress, k)
                for k in ("entries", "visited", "files", "bytes", "bytes_hashed", "excluded", "error_count")
            },
            "errors": progress.errors,
            "resumes": resumes,
            "time": time.time(),
        }
        with dbmod.transaction(self.conn):
            if batch:
                queue.add_uncommitted(self.conn, self.snapshot_id, batch)
            stored.save(self.conn, self.snapshot_id, state)
        crashpoints.reached("scan.checkpoint_written")
        batch.clear()
        self.last = time.monotonic()



def blob_hashes(state, logs_dir):
    """
    The hashes of the blobs a checkpoint's records use, in record order.
    A resumed scan copies these records as they are, and the committed
    blobs among them are listed nowhere else (``snapshot_blobs`` leaves them
    out), so until its log is written they are live for a prune.
    Raises OSError or LogFormatError if the checkpoint cannot be read.
    """
    with open(os.path.join(logs_dir, state["file"]), "rb") as f:
        _, records = read_partial(f, state["offset"])
        for record in records:
            for h, _ in getattr(record, "blobs", ()):
                yield h


def restore(state, logs_dir, writer, links_out, progress):
    """
    Copy a checkpoint's records into ``writer`` and its hard links into
    ``links_out``; set the counters; return (the path to resume after, links).
    """
    path = os.path.join(logs_dir, state["file"])
    with open(path, "rb") as f:
        _, records = read_partial(f, state["offset"])
        for record in records:
            writer.add(record)
    if writer.records != state["records"]:
        raise LogFormatError(
            f"the checkpoint counts {state['records']} records, its log has {writer.records}")
    links = {}
    with open(path + ".links", "rb") as f:
        data = f.read(state["links_offset"])
    for line in data.splitlines():
        dev, ino, b64 = line.split(b" ")
        links[(int(dev), int(ino))] = base64.b64decode(b64)
        links_out.write(line + b"\n")
    for key, value in state["progress"].items():
        setattr(progress, key, value)
    progress.errors = list(state["errors"])
    last = base64.b64decode(state["last_path"]) if state["has_last"] else None
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state["time"]))
    progress.add_error(None, (
        f"the scan was interrupted and resumed from its checkpoint of {when}: "
        f"the entries up to {display_path(last)} were scanned before the interruption"
    ))
    return last, links
