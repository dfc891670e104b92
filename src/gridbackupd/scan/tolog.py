"""
One scan to a log, in a worker thread: walk, write the log, queue the blobs.

``scan_to_log`` is given a ``LogScan`` (what to scan and where the log
goes) and the ``ScanProgress`` the API reads.  It uses its own database
connection, in batches, so the reactor's stays free.  With an incremental
header only the differences from the previous snapshot are written; if the
previous logs turn out damaged, the scan is done again as a full log.

The scan takes checkpoints (see ``checkpoints``); if the database holds one
for this snapshot that was taken with the same settings and parent, the
scan resumes after its last path instead of starting over (the snapshot's
errors then say so).
"""

import os
import sqlite3

import attr
from twisted.logger import Logger

from gridbackupd import faultpoints
from gridbackupd.changes import compute as compute_changes
from gridbackupd.changes.tally import Tally
from gridbackupd.errors import DiskFull, disk_full, is_disk_full
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.logwriter import LogWriter
from gridbackupd.model import LogHeader
from gridbackupd.scan import checkpoints
from gridbackupd.scan.compare import PreviousEntries
from gridbackupd.scan.values import ScanOptions, ScanStopped
from gridbackupd.scan.walker import Scanner
from gridbackupd.scan.watched import WatchedScanner, marked, paths_to_revisit, write_revisit
from gridbackupd.state import changes as stored_changes
from gridbackupd.state import checkpoints as stored
from gridbackupd.state import db as dbmod
from gridbackupd.state import queue, snapshots

BLOB_BATCH = 2000
CHANGES_BATCH = 5000

log = Logger()


@attr.frozen
class LogScan:
    """
    What one scan is asked to do: the snapshot (``db_path`` is the state
    database to queue its blobs in), its log's header, what to walk, where
    the log goes, the previous snapshot's chain to compare with as ``(id,
    log path)`` pairs, full first (empty: every file is read), and how
    often to take a checkpoint.
    """

    db_path: str
    snapshot_id: str
    header: LogHeader
    options: ScanOptions
    log_path: str
    previous_logs: tuple = attr.field(default=(), converter=tuple)
    checkpoint_every: float = checkpoints.CHECKPOINT_SECONDS
    # A watched scan (``watched``): the directories to list, absolute,
    # bytes; None for a full walk.  ``copy_blobs``: see WatchedScanner.
    changed: frozenset | None = None
    copy_blobs: bool = True
    # (entries, files, bytes) of the previous snapshot as its scan counted
    # them (``state.snapshots.totals``), or None: an incremental watched
    # scan that has them counts by difference (``compare.Previous``).
    previous_totals: tuple | None = None

    @property
    def logs_dir(self):
        return os.path.dirname(self.log_path)


def scan_to_log(scan, progress):
    """Run ``scan`` (a ``LogScan``); return its counts and the kind of log written."""
    if scan.header.kind == "incremental" and not scan.previous_logs:
        raise ValueError("an incremental log needs its parent's logs")
    conn = dbmod.connect_writer(scan.db_path)
    run = _Run(conn, scan, progress)
    try:
        try:
            return run.once()
        except _StartOver:
            checkpoints.drop(conn, scan.snapshot_id, scan.logs_dir)
            progress.restart()
            return run.once()
    except ScanStopped:
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        _drop_partial(conn, scan)
        if isinstance(e, DiskFull):
            raise
        if isinstance(e, OSError):
            raise disk_full("the scan log", scan.logs_dir) from e
        raise disk_full("the database", os.path.dirname(scan.db_path)) from e
    finally:
        conn.close()


def _drop_partial(conn, scan):
    """
    A scan that failed for lack of space is never resumed: its partial log
    only takes space, which is just what is missing.  If the database
    cannot even forget the checkpoint, both stay as they are, consistent.
    """
    try:
        checkpoints.drop(conn, scan.snapshot_id)
    except (sqlite3.Error, DiskFull) as e:
        log.warn("the checkpoint of the failed scan {id} stays: {error}", id=scan.snapshot_id, error=e)
        return
    _remove_partial_logs(scan)


def _remove_partial_logs(scan):
    stem = os.path.basename(scan.log_path) + ".tmp"
    for name in os.listdir(scan.logs_dir):
        if name.startswith(stem):
            _unlink(os.path.join(scan.logs_dir, name))


class _StartOver(Exception):
    """A checkpoint that cannot be resumed: scan from the beginning."""


class _Run:
    """A scan under way: its connection, its counters, the blobs found and not yet queued."""

    def __init__(self, conn, scan, progress):
        self.conn = conn
        self.scan = scan
        self.progress = progress
        self.batch = []
        self.fingerprint = checkpoints.fingerprint(scan.header, scan.options, scan.previous_logs)

    def emit_blob(self, blob):
        self.batch.append(blob)
        if len(self.batch) >= BLOB_BATCH:
            self.flush()

    def flush(self):
        queue.add_uncommitted(self.conn, self.scan.snapshot_id, self.batch)
        self.batch.clear()

    def _checkpoint_to_resume(self):
        """The stored checkpoint if this scan can resume from it; any other is dropped."""
        scan = self.scan
        state = stored.load(self.conn, scan.snapshot_id)
        if state is None:
            return None
        old = os.path.join(scan.logs_dir, state["file"])
        if state["fingerprint"] == self.fingerprint and os.path.exists(old) \
                and os.path.getsize(old) >= state["offset"]:
            return state
        log.info("the checkpoint of {id} does not match this scan; it starts over", id=scan.snapshot_id)
        checkpoints.drop(self.conn, scan.snapshot_id, scan.logs_dir)
        return None

    def once(self):
        scan, progress, batch = self.scan, self.progress, self.batch
        snapshot_id, logs_dir, header = scan.snapshot_id, scan.logs_dir, scan.header
        resume = self._checkpoint_to_resume()
        if resume is not None:
            header = attr.evolve(header, started=resume["started"])
            resumes = resume["resumes"] + 1
        else:
            resumes = 0
            # Leftovers of scans of this snapshot that left no usable checkpoint.
            _remove_partial_logs(scan)
        tmp = f"{scan.log_path}.tmp{resumes}"
        taker = checkpoints.Checkpoints(self.conn, snapshot_id, self.fingerprint, header.started,
                                        scan.checkpoint_every)
        to_revisit = self._revisit(resume)
        # What a watched scan takes unchanged from the parent is passed over
        # unread, when nothing needs it: not the log (incremental), not the
        # queue (copy_blobs), not the counts (the parent's totals known).
        by_difference = (to_revisit is not None and header.kind == "incremental" and not scan.copy_blobs
                         and scan.previous_totals is not None)
        previous = (PreviousEntries(scan.previous_logs, skipping=by_difference)
                    if scan.previous_logs else None)
        # The figures are counted as the scan compares; a resumed scan did
        # not count what it recorded before, so it computes them after.
        tally = None
        if resume is None:
            stored_changes.start(self.conn, snapshot_id)
            tally = Tally(lambda rows: stored_changes.add_rows(self.conn, snapshot_id, rows), CHANGES_BATCH)
        try:
            with open(tmp, "wb") as out, open(tmp + ".links", "wb") as links_out:
                writer = LogWriter(faultpoints.writes("scan.log_write", out), header)
                links = {}
                resume_after = None
                if resume is not None:
                    try:
                        resume_after, links = checkpoints.restore(resume, logs_dir, writer, links_out, progress)
                    except (OSError, ValueError) as e:
                        log.warn("the checkpoint of {id} is unusable ({error}); the scan starts over",
                                 id=snapshot_id, error=e)
                        writer.abort()
                        resume = None
                if resume is None and resumes:
                    raise _StartOver()

                # The paths of this log to look at again (write_revisit); a
                # resumed log's first records are not seen: none then.
                marked_paths: list[bytes] | None = [] if resume is None else None

                def emit_record(record):
                    writer.add(record)
                    if marked_paths is not None:
                        marked_paths.extend(marked(record))
                    if taker.due():
                        taker.take(writer, out, links_out, scanner, progress, batch, resumes)

                kwargs = dict(
                    incremental=header.kind == "incremental",
                    resume_after=resume_after, links=links,
                    trust_ctime_before=previous.settled_before if previous is not None else 0,
                    changes=tally,
                    previous_committed=previous is not None and snapshots.state_of(
                        self.conn, scan.previous_logs[-1][0]) == "complete",
                    parent_totals=scan.previous_totals if by_difference else None,
                )
                scanner: Scanner
                if to_revisit is not None:
                    scanner = WatchedScanner(
                        scan.options, previous, emit_record, self.emit_blob, progress,
                        dirty=scan.changed, revisit=to_revisit, copy_blobs=scan.copy_blobs, **kwargs)
                else:
                    scanner = Scanner(scan.options, previous, emit_record, self.emit_blob, progress,
                                      **kwargs)
                watched = to_revisit is not None
                if resume is not None:
                    # The new file holds the checkpoint's records: from now on
                    # it is the one to resume from, and the old one can go.
                    taker.take(writer, out, links_out, scanner, progress, batch, resumes)
                    for name in (resume["file"], resume["file"] + ".links"):
                        _unlink(os.path.join(logs_dir, name))
                try:
                    scanner.run()
                except ScanStopped:
                    taker.take(writer, out, links_out, scanner, progress, batch, resumes)
                    raise
                totals = scanner.previous.totals
                if scanner.previous.by_difference and totals is not None:
                    # Counted by difference: the progress saw only what was visited.
                    progress.entries, progress.files, progress.bytes = totals
                if previous is not None and (header.kind == "incremental" or watched) and previous.failed:
                    writer.abort()
                else:
                    writer.close()
                    out.flush()
                    os.fsync(out.fileno())
        finally:
            if previous is not None:
                previous.close()
        if previous is not None and (header.kind == "incremental" or watched) and previous.failed:
            self.flush()
            log.warn("the previous logs of {id} are damaged; a full log is made instead", id=snapshot_id)
            checkpoints.drop(self.conn, snapshot_id, logs_dir)
            _unlink(tmp)
            _unlink(tmp + ".links")
            progress.restart()
            full = attr.evolve(scan, header=attr.evolve(header, kind="full", parent=None), previous_logs=(),
                               changed=None)
            return scan_to_log(full, progress)
        if batch:
            self.flush()
        os.replace(tmp, scan.log_path)
        if marked_paths is not None:
            try:
                write_revisit(scan.log_path, marked_paths)
            except OSError as e:
                log.warn("the paths to look at again in {id} are left to find in its log: {error}",
                         id=snapshot_id, error=e)
        self._store_figures(tally, previous)
        checkpoints.drop(self.conn, snapshot_id)
        _unlink(tmp + ".links")
        return {
            "kind": header.kind, "files": progress.files, "bytes": progress.bytes,
            "records": writer.records, "changed": scanner.previous.changed,
            "deleted": scanner.previous.deleted, "resumes": resumes,
            "started": header.started, "scan": "watched" if watched else "full",
            "visited": progress.visited, "totals": tuple(totals) if totals is not None else None,
        }

    def _revisit(self, resume):
        """
        The paths a watched scan looks at beside its dirty directories, or
        None for a full walk: none was asked, there is no parent, or the
        scan resumes (what it left to do is walked).
        """
        scan = self.scan
        if scan.changed is None or not scan.previous_logs or resume is not None:
            return None
        try:
            return paths_to_revisit(scan.previous_logs)
        except (OSError, LogFormatError) as e:
            log.warn("the previous logs of {id} cannot be read ahead ({error}); every path is walked",
                     id=scan.snapshot_id, error=e)
            return None


    def _store_figures(self, tally, previous):
        """The figures against the parent (none: everything is added), counted or else computed."""
        scan = self.scan
        parent = scan.previous_logs[-1][0] if scan.previous_logs else None
        if previous is not None and previous.failed:
            return  # compared with part of the parent only: computed later, if its logs can be read
        if tally is None:
            logs = [(scan.snapshot_id, scan.log_path)]
            if scan.header.kind == "incremental":
                logs = list(scan.previous_logs) + logs
            try:
                tally = compute_changes.compare(scan.previous_logs, logs)
            except (OSError, LogFormatError) as e:
                log.warn("the figures of {id} are left to compute later: {error}", id=scan.snapshot_id, error=e)
                return
        stored_changes.finish(self.conn, scan.snapshot_id, parent, tally.counts, tally.rows)


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
