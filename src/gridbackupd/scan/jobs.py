"""
Backup jobs: turn requests into snapshots, one scan at a time.

A request gets its snapshot id at once (the id is also the name of the log
on the grid, so every machine reading the root sees the same id).  A
request made while another waits joins the waiting one: there is never more
than one scan queued behind the running one.  The scan itself
(``tolog.scan_to_log``) runs in a worker thread; this object keeps the
counters the API reads.

Each scan writes a full log, or an incremental one against the newest
scanned snapshot while that one's chain holds fewer than ``full_every``
logs (see ``plan``).  A scan killed half-way resumes from its checkpoint;
``pre_command`` and ``post_command`` (``hooks``) run around each scan.
"""

import os
import secrets
import time

from twisted.internet.defer import DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from gridbackupd import clock as clockmod
from gridbackupd import crashpoints
from gridbackupd.errors import DiskFull, one_line
from gridbackupd.format import chain
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.model import LogHeader
from gridbackupd.runner import QueuedRunner
from gridbackupd.scan import checkpoints
from gridbackupd.scan.hooks import run_command
from gridbackupd.scan.metadata import display_path
from gridbackupd.scan.tolog import LogScan, scan_to_log
from gridbackupd.scan.values import ScanOptions, ScanProgress, ScanStopped
from gridbackupd.state import checkpoints as stored_checkpoints
from gridbackupd.state import db as dbmod
from gridbackupd.state import snapshots


def new_snapshot_id(now):
    """Sortable by time, unique without coordination, safe in a URL and a file name."""
    micro = int(now * 1_000_000) % 1_000_000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{micro:06d}Z-" + secrets.token_hex(4)


class BackupJobs(QueuedRunner):
    """
    The queue of scans and its runner, as ``[backup]`` says, for this host.
    ``waiters`` fire with a snapshot's end state (the publisher fires them
    when it completes one); ``on_scanned`` is called when a log is written.
    """

    log = Logger()
    what = "backup job"
    final_states = ("complete", "incomplete", "failed")

    def __init__(self, reactor, conn, statedir, pool, backup, hostname, on_scanned, waiters):
        super().__init__(waiters)
        self.reactor = reactor
        self.conn = conn
        self.statedir = statedir
        self.db_path = statedir.database
        self.logs_dir = statedir.logs
        self.pool = pool
        self.backup = backup
        self.hostname = hostname
        self.on_scanned = on_scanned
        self.progress: ScanProgress | None = None
        self.current = None
        self.current_kind = None
        self.last_error = None  # why the last scan failed, one line; None after one that did not
        # The last scan that wrote its log: {"snapshot", "scan", "entries", "visited", "seconds"}.
        self.last_scan = None
        self.current_watched = False
        self._started_mono = 0.0
        # Queued watched scans: snapshot id -> the directories to walk.
        self._changed: dict[str, frozenset] = {}
        # (id, ScanOptions) of this process's last scan: a watched scan's parent.
        self._scanned_with = None
        # Held by each scan and by forget and prune (maintenance.py): a scan
        # dedups against committed blobs, which a prune may be dropping.
        self.scan_lock = DeferredLock()

    def recover_interrupted(self):
        """
        A scan killed mid-way runs again under the same id: from its last
        checkpoint if it has one (see ``scan_to_log``), else from the
        beginning.
        """
        ids = snapshots.scanning_ids(self.conn)
        resumable = set()
        with dbmod.transaction(self.conn):
            for snapshot_id in ids:
                if stored_checkpoints.load(self.conn, snapshot_id) is not None:
                    resumable.add(snapshot_id)
                snapshots.requeue(self.conn, snapshot_id, keep_blobs=snapshot_id in resumable)
        for snapshot_id in ids:
            if snapshot_id in resumable:
                self.log.info("scan of {id} was interrupted; it resumes from its checkpoint",
                              id=snapshot_id)
            else:
                self.log.info("scan of {id} was interrupted; it starts again", id=snapshot_id)
        return ids

    def request(self, tags=(), changed=None):
        """
        Queue a scan (or join the one already waiting); return its snapshot id.

        ``changed`` None asks for a full walk; a set of absolute directory
        paths (bytes) for a watched scan, which walks only those and takes
        every other entry from the parent.  A request joining a waiting
        scan adds its directories to the waiting one's; a full walk asked
        by either makes it a full walk.  The sets live in memory only: a
        scan queued before a restart is a full walk.
        """
        waiting = snapshots.next_queued(self.conn)
        if waiting is not None:
            if waiting in self._changed:
                if changed is None:
                    del self._changed[waiting]
                    snapshots.set_scan(self.conn, waiting, "full")
                else:
                    self._changed[waiting] = self._changed[waiting] | frozenset(changed)
            return waiting
        now = self.not_before_the_newest(clockmod.wall(), 0.001)
        snapshot_id = new_snapshot_id(now)
        snapshots.create_queued(self.conn, snapshot_id, self.hostname, self.backup.paths, tags, now,
                                scan="full" if changed is None else "watched")
        if changed is not None:
            self._changed[snapshot_id] = frozenset(changed)
        self.kick()
        return snapshot_id

    def not_before_the_newest(self, now, step=0.0):
        """
        ``now``, or just after the newest snapshot's time if the wall clock
        says earlier (it was set back): snapshot times, and so ids and what
        retention keeps, follow the order in which snapshots were made.
        """
        newest = snapshots.newest_time(self.conn)
        return now if newest is None or now >= newest + step else newest + step

    def interrupt(self):
        """A running scan stops at its next entry, after a checkpoint, and resumes at the next start."""
        if self.progress is not None:
            self.progress.stop_requested = True

    def state_of(self, snapshot_id):
        return snapshots.state_of(self.conn, snapshot_id)

    def next_queued(self):
        return snapshots.next_queued(self.conn)

    async def run_one(self, snapshot_id):
        await self.scan_lock.acquire()
        try:
            if self.stopping:
                return False
            try:
                await self.run_scan(snapshot_id)
            except DiskFull as e:
                self._put_back(snapshot_id, e)
                return False
        finally:
            self.scan_lock.release()
        return True

    def _put_back(self, snapshot_id, error):
        """
        A scan whose state could not be recorded (the state_dir's file system
        is full) goes back to the queue, as after a kill: the next request
        joins it and runs it again.  If even that cannot be written, the next
        start puts it back (``recover_interrupted``).
        """
        self.last_error = one_line(error)
        self.log.warn("scan of {id} is put back in the queue: {error}", id=snapshot_id, error=self.last_error)
        try:
            with dbmod.transaction(self.conn):
                keep = stored_checkpoints.load(self.conn, snapshot_id) is not None
                snapshots.requeue(self.conn, snapshot_id, keep_blobs=keep)
        except DiskFull:
            pass

    def _parent(self):
        """
        ``(parent id, its chain as [(id, log path)], full first)`` of the next
        scan: the newest scanned snapshot of this host, if its logs are all
        here and readable; else ``(None, [])`` (the next log is full and
        every file is read).
        """
        for snapshot_id, log_path in snapshots.newest_scanned(self.conn, self.hostname):
            if not os.path.exists(log_path):
                continue
            try:
                return snapshot_id, chain.chain_paths(log_path, snapshots.log_resolver(self.conn, self.logs_dir))
            except (OSError, LogFormatError) as e:
                self.log.warn(
                    "the logs of {id} are unusable, the next log is full and every file "
                    "is read again: {error}", id=snapshot_id, error=e,
                )
        return None, []

    def plan(self):
        """``(kind, parent id, parent chain)`` of the next scan's log."""
        parent, parent_chain = self._parent()
        if parent is None:
            return "full", None, []
        if len(parent_chain) >= self.backup.full_every:
            return "full", parent, parent_chain
        return "incremental", parent, parent_chain

    async def run_scan(self, snapshot_id):
        started = self.not_before_the_newest(clockmod.wall())
        self._started_mono = clockmod.monotonic()  # the scan's duration, whatever the wall clock does
        snapshots.mark_scanning(self.conn, snapshot_id, started)
        self.current = snapshot_id
        self.current_kind = None
        changed = self._changed.pop(snapshot_id, None)
        progress = self.progress = ScanProgress(started=started)
        env = {"GRIDBACKUP_SNAPSHOT": snapshot_id}
        if self.backup.pre_command:
            progress.current = b"(pre_command)"
            done = await self._command("pre_command", self.backup.pre_command, env)
            if not done.ok:
                self.current = None
                self.log.warn("pre_command failed, {id} is not scanned: {why}", id=snapshot_id, why=done.why)
                with dbmod.transaction(self.conn):
                    snapshots.mark_failed(self.conn, snapshot_id, self._finished(started),
                                          [{"path": None, "reason": "pre_command " + done.why}])
                    checkpoints.drop(self.conn, snapshot_id, self.logs_dir)
                self.waiters.fire(snapshot_id, "failed")
                return
        try:
            await self._scan(snapshot_id, started, progress, changed)
        finally:
            if self.backup.pre_command or self.backup.post_command:
                await self._post_command(snapshot_id, env)

    async def _post_command(self, snapshot_id, env):
        """Run post_command whatever became of the scan; a failure is added to its errors."""
        if not self.backup.post_command:
            return
        done = await self._command("post_command", self.backup.post_command, env)
        if done.ok:
            return
        self.log.warn("post_command failed after {id}: {why}", id=snapshot_id, why=done.why)
        snapshots.add_error(self.conn, snapshot_id, {"path": None, "reason": "post_command " + done.why})

    async def _command(self, name, command, env):
        """Run one of the commands in a worker thread; what it printed goes to the daemon's log."""
        done = await deferToThreadPool(self.reactor, self.pool, run_command, command, env,
                                       self.backup.command_timeout)
        for line in done.output:
            self.log.info("{name}: {line}", name=name, line=line)
        return done

    async def _scan(self, snapshot_id, started, progress, changed):
        kind, parent, parent_chain = self.plan()
        options = ScanOptions(
            roots=self.backup.paths,
            exclude=self.backup.exclude,
            excluded_dirs=(self.statedir.root,),
            exclude_if_present=self.backup.exclude_if_present,
            exclude_caches=self.backup.exclude_caches,
            one_file_system=self.backup.one_file_system,
            # The uploader reads (and, once committed, deletes) blobs kept here.
            spool_dir=self.statedir.spool,
            tiny_max=self.backup.tiny_max,
            chunk_threshold=self.backup.chunk_threshold,
        )
        changed = self._watchable(changed, parent, options)
        snapshots.set_kind(self.conn, snapshot_id, kind, parent)
        snapshots.set_scan(self.conn, snapshot_id, "full" if changed is None else "watched")
        self.current_kind = kind
        self.current_watched = changed is not None
        progress.current = b""
        os.makedirs(self.logs_dir, exist_ok=True)
        log_path = self.statedir.log_path(snapshot_id)
        header = LogHeader(
            snapshot=snapshot_id, kind=kind, host=self.hostname,
            parent=parent if kind == "incremental" else None,
            paths=tuple(dict.fromkeys(os.fsencode(os.path.normpath(p)) for p in self.backup.paths)),
            tags=self._tags(snapshot_id),
            started=started,
        )
        try:
            scan = LogScan(db_path=self.db_path, snapshot_id=snapshot_id, header=header,
                           options=options, log_path=log_path, previous_logs=parent_chain,
                           checkpoint_every=self.backup.checkpoint_interval, changed=changed,
                           copy_blobs=snapshots.state_of(self.conn, parent) != "complete",
                           previous_totals=snapshots.totals(self.conn, parent) if parent else None)
            counts = await deferToThreadPool(self.reactor, self.pool, scan_to_log, scan, progress)
        except ScanStopped:
            # The row stays 'scanning' with its checkpoint: the next start
            # resumes it (recover_interrupted).
            self.log.info("scan of {id} stopped at a checkpoint; it resumes at the next start",
                          id=snapshot_id)
            return
        except Exception as e:
            if isinstance(e, DiskFull):
                self.log.warn("scan of {id} failed: {error}", id=snapshot_id, error=e)
            else:
                self.log.failure("scan of {id} failed", id=snapshot_id)
            self.last_error = one_line(e)
            snapshots.mark_failed(self.conn, snapshot_id, self._finished(started),
                                  [{"path": None, "reason": self.last_error}])
            self.waiters.fire(snapshot_id, "failed")
            return
        finally:
            self.current = None
        kind = counts["kind"]
        self.last_error = None
        self._scanned_with = (snapshot_id, options)
        snapshots.set_scan(self.conn, snapshot_id, counts["scan"])
        self.last_scan = {
            "snapshot": snapshot_id, "scan": counts["scan"], "entries": progress.entries,
            "visited": counts["visited"], "seconds": round(clockmod.monotonic() - self._started_mono, 3),
        }
        snapshots.mark_uploading(
            self.conn, snapshot_id, kind=kind, parent=parent, started=counts["started"],
            finished=max(counts["started"], self._finished(started)), files=counts["files"], bytes=counts["bytes"],
            errors=progress.error_list(), log_path=log_path, totals=counts.get("totals"),
        )
        crashpoints.reached("scan.log_finished")
        self.log.info(
            "scanned {id} ({kind}, {scan} scan visiting {visited} entries): {files} files, "
            "{bytes} bytes, {records} records, {errors} errors",
            id=snapshot_id, kind=kind, scan=counts["scan"], visited=counts["visited"],
            files=counts["files"], bytes=counts["bytes"],
            records=counts["records"], errors=progress.error_count,
        )
        self.on_scanned(snapshot_id)

    def _watchable(self, changed, parent, options):
        """
        The directories a watched scan lists, or None for a full walk: the
        parent must be this process's last scan, made with the same
        settings (a watcher saw the changes since that scan only).  The
        paths the parent's scan could not read are listed again.
        """
        if changed is None or parent is None or self._scanned_with != (parent, options):
            return None
        changed = set(changed)
        for error in snapshots.errors_of(self.conn, parent):
            path = error.get("path")
            if path is None:
                if error.get("reason", "").startswith("and "):
                    return None  # more errors than listed: where, is not known
                continue
            if not isinstance(path, str) or not path.startswith("/") or "\\" in path:
                return None  # not a path that can be told back as bytes (see display_path)
            path = os.fsencode(path)
            changed.update((path, os.path.dirname(path)))
        return frozenset(changed)

    def _finished(self, started):
        """When the scan that started at ``started`` (wall) finished: that plus its monotonic duration."""
        return started + clockmod.monotonic() - self._started_mono

    def _tags(self, snapshot_id):
        tags = snapshots.tags(self.conn, snapshot_id)
        return tuple(dict.fromkeys(t for t in tags if isinstance(t, str) and t))

    def status(self):
        if self.current is None or self.progress is None:
            return {"running": False, "last_error": self.last_error, "last_scan": self.last_scan}
        p = self.progress
        elapsed = max(clockmod.monotonic() - self._started_mono, 1e-6)
        return {
            "running": True,
            "last_error": self.last_error,
            "last_scan": self.last_scan,
            "snapshot": self.current,
            "kind": self.current_kind,
            "watched": self.current_watched,
            "entries": p.entries,
            "visited": p.visited,
            "files": p.files,
            "bytes": p.bytes,
            "bytes_hashed": p.bytes_hashed,
            "excluded": p.excluded,
            "current_path": display_path(p.current),
            "elapsed": round(elapsed, 1),
            "entries_per_second": round(p.entries / elapsed, 1),
            "bytes_hashed_per_second": round(p.bytes_hashed / elapsed),
            "errors": p.error_count,
        }
