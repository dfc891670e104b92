"""
Backup jobs: turn requests into snapshots, one scan at a time.

A request gets its snapshot id at once (the id is also the name of the log
on the grid, so every machine reading the root sees the same id).  A
request made while another waits joins the waiting one: there is never more
than one scan queued behind the running one.  The scan itself runs in a
worker thread; this object keeps the counters the API reads.
"""

import json
import os
import secrets
import sqlite3
import time

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from . import db as dbmod
from . import queue, snapshotlog
from .model import LogHeader
from .scanner import ScanOptions, ScanProgress, Scanner

BLOB_BATCH = 2000


def new_snapshot_id(now):
    """Sortable by time, unique without coordination, safe in a URL and a file name."""
    micro = int(now * 1_000_000) % 1_000_000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{micro:06d}Z-" + secrets.token_hex(4)


class BackupJobs:
    log = Logger()

    def __init__(self, reactor, conn, db_path, pool, config, on_scanned, waiters):
        self.reactor = reactor
        self.conn = conn
        self.db_path = db_path
        self.pool = pool
        self.config = config
        self.on_scanned = on_scanned
        self.waiters = waiters
        self.logs_dir = os.path.join(config.state_dir, "logs")
        self.progress = None
        self.current = None
        self._running = None
        self._stopping = False

    def recover_interrupted(self):
        """A scan killed mid-way starts again from the beginning, under the same id."""
        rows = self.conn.execute("SELECT id FROM snapshots WHERE state = 'scanning'").fetchall()
        with dbmod.transaction(self.conn):
            for (snapshot_id,) in rows:
                self.conn.execute("DELETE FROM snapshot_blobs WHERE snapshot = ?", (snapshot_id,))
                self.conn.execute(
                    "UPDATE snapshots SET state = 'queued', started = NULL, errors = '[]' WHERE id = ?",
                    (snapshot_id,),
                )
        for (snapshot_id,) in rows:
            self.log.info("scan of {id} was interrupted; it starts again", id=snapshot_id)
        return [r[0] for r in rows]

    def request(self, tags=()):
        """Queue a scan (or join the one already waiting); return its snapshot id."""
        row = self.conn.execute(
            "SELECT id FROM snapshots WHERE state = 'queued' ORDER BY id LIMIT 1"
        ).fetchone()
        if row is not None:
            return row[0]
        now = time.time()
        snapshot_id = new_snapshot_id(now)
        with dbmod.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO snapshots (id, state, host, paths, tags, requested) "
                "VALUES (?, 'queued', ?, ?, ?, ?)",
                (snapshot_id, self.config.hostname, json.dumps(list(self.config.backup.paths)),
                 json.dumps(list(tags)), now),
            )
        self.kick()
        return snapshot_id

    def kick(self):
        if self._running is None and not self._stopping:
            self._running = Deferred.fromCoroutine(self._run_queued())
            self._running.addErrback(lambda f: self.log.failure("backup job failed", f))

            def finished(result):
                self._running = None
                return result

            self._running.addBoth(finished)

    def stop(self):
        self._stopping = True
        return self._running

    async def _run_queued(self):
        while not self._stopping:
            row = self.conn.execute(
                "SELECT id FROM snapshots WHERE state = 'queued' ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                return
            await self.run_scan(row[0])

    def _previous_log(self):
        row = self.conn.execute(
            "SELECT log_path FROM snapshots WHERE host = ? AND log_path IS NOT NULL "
            "AND state IN ('uploading', 'complete', 'incomplete') ORDER BY id DESC LIMIT 1",
            (self.config.hostname,),
        ).fetchone()
        if row and os.path.exists(row[0]):
            return row[0]
        return None

    async def run_scan(self, snapshot_id):
        started = time.time()
        with dbmod.transaction(self.conn):
            self.conn.execute(
                "UPDATE snapshots SET state = 'scanning', started = ? WHERE id = ?",
                (started, snapshot_id),
            )
        self.current = snapshot_id
        self.progress = ScanProgress(started=started)
        os.makedirs(self.logs_dir, exist_ok=True)
        log_path = os.path.join(self.logs_dir, snapshot_id + ".log")
        options = ScanOptions(
            roots=self.config.backup.paths,
            exclude=self.config.backup.exclude,
            excluded_dirs=(self.config.state_dir,),
            tiny_max=self.config.backup.tiny_max,
            chunk_threshold=self.config.backup.chunk_threshold,
        )
        header = LogHeader(
            snapshot=snapshot_id, kind="full", host=self.config.hostname,
            paths=tuple(dict.fromkeys(os.fsencode(os.path.normpath(p)) for p in self.config.backup.paths)),
            started=started,
        )
        try:
            counts = await deferToThreadPool(
                self.reactor, self.pool, scan_to_log,
                self.db_path, snapshot_id, header, options, self._previous_log(),
                log_path, self.progress,
            )
        except Exception as e:
            self.log.failure("scan of {id} failed", id=snapshot_id)
            with dbmod.transaction(self.conn):
                self.conn.execute(
                    "UPDATE snapshots SET state = 'failed', finished = ?, errors = ? WHERE id = ?",
                    (time.time(), json.dumps([{"path": None, "reason": str(e)}]), snapshot_id),
                )
            self.waiters.fire(snapshot_id, "failed")
            return
        finally:
            self.current = None
        with dbmod.transaction(self.conn):
            self.conn.execute(
                "UPDATE snapshots SET state = 'uploading', kind = 'full', finished = ?, "
                "files = ?, bytes = ?, errors = ?, log_path = ? WHERE id = ?",
                (time.time(), counts["files"], counts["bytes"],
                 json.dumps(self.progress.errors), log_path, snapshot_id),
            )
        self.log.info(
            "scanned {id}: {files} files, {bytes} bytes, {errors} errors",
            id=snapshot_id, files=counts["files"], bytes=counts["bytes"],
            errors=len(self.progress.errors),
        )
        self.on_scanned(snapshot_id)

    def status(self):
        if self.current is None or self.progress is None:
            return {"running": False}
        p = self.progress
        elapsed = max(time.time() - p.started, 1e-6)
        return {
            "running": True,
            "snapshot": self.current,
            "entries": p.entries,
            "files": p.files,
            "bytes": p.bytes,
            "bytes_hashed": p.bytes_hashed,
            "current_path": p.current,
            "entries_per_second": round(p.entries / elapsed, 1),
            "errors": len(p.errors),
        }


def _previous_entries(fileobj):
    """
    The previous snapshot's entries, for the streaming merge.  A damaged
    previous log only costs reading every file again, never the scan.
    """
    try:
        _, records = snapshotlog.read_log(fileobj)
        yield from records
    except snapshotlog.LogFormatError as e:
        BackupJobs.log.warn("previous log unusable, reading every file again: {error}", error=e)


def scan_to_log(db_path, snapshot_id, header, options, previous_log, log_path, progress):
    """
    In a worker thread: walk, write the log, queue the blobs.  Uses its own
    database connection, in batches, so the reactor's stays free.
    """
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    batch = []

    def emit_blob(blob):
        batch.append(blob)
        if len(batch) >= BLOB_BATCH:
            flush()

    def flush():
        with dbmod.transaction(conn):
            queue.add_blobs(conn, snapshot_id, batch)
        batch.clear()

    tmp = log_path + ".tmp"
    try:
        prev_file = open(previous_log, "rb") if previous_log else None
        try:
            previous = _previous_entries(prev_file) if prev_file else None
            with open(tmp, "wb") as out:
                writer = snapshotlog.LogWriter(out, header)
                Scanner(options, previous, writer.add, emit_blob, progress).run()
                writer.close()
                out.flush()
                os.fsync(out.fileno())
        finally:
            if prev_file:
                prev_file.close()
        if batch:
            flush()
        os.replace(tmp, log_path)
    finally:
        conn.close()
    return {"files": progress.files, "bytes": progress.bytes}
