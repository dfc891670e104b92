"""
Backup jobs: turn requests into snapshots, one scan at a time.

A request gets its snapshot id at once (the id is also the name of the log
on the grid, so every machine reading the root sees the same id).  A
request made while another waits joins the waiting one: there is never more
than one scan queued behind the running one.  The scan itself runs in a
worker thread; this object keeps the counters the API reads.

Each scan writes a full log, or an incremental one against the newest
scanned snapshot while that one's chain holds fewer than ``full_every``
logs (see ``plan``).  ``scan_to_log`` takes checkpoints, so a scan killed
half-way resumes instead of starting over; ``pre_command`` and
``post_command`` run around each scan.
"""

import base64
import hashlib
import os
import secrets
import subprocess
import time

import attr
from twisted.internet.defer import DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from gridbackupd.format import chain
from gridbackupd.format import log as snapshotlog
from gridbackupd.model import LogHeader
from gridbackupd.scan.scanner import Scanner, ScanOptions, ScanProgress, ScanStopped, display_path
from gridbackupd.state import checkpoints, queue, snapshots
from gridbackupd.state import db as dbmod
from gridbackupd.waiters import SerialRunner

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
        self.current_kind = None
        self._runner = SerialRunner(self._run_queued, self.log, "backup job")
        self._stopping = False
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
                if checkpoints.load(self.conn, snapshot_id) is not None:
                    resumable.add(snapshot_id)
                snapshots.requeue(self.conn, snapshot_id, keep_blobs=snapshot_id in resumable)
        for snapshot_id in ids:
            if snapshot_id in resumable:
                self.log.info("scan of {id} was interrupted; it resumes from its checkpoint",
                              id=snapshot_id)
            else:
                self.log.info("scan of {id} was interrupted; it starts again", id=snapshot_id)
        return ids

    def request(self, tags=()):
        """Queue a scan (or join the one already waiting); return its snapshot id."""
        waiting = snapshots.next_queued(self.conn)
        if waiting is not None:
            return waiting
        now = time.time()
        snapshot_id = new_snapshot_id(now)
        snapshots.create_queued(self.conn, snapshot_id, self.config.hostname,
                                self.config.backup.paths, tags, now)
        self.kick()
        return snapshot_id

    def kick(self):
        if not self._stopping:
            self._runner.kick()

    def stop(self):
        """Stop: a running scan stops at its next entry, after a checkpoint, and resumes at the next start."""
        self._stopping = True
        if self.progress is not None:
            self.progress.stop_requested = True
        return self._runner.running

    async def _run_queued(self):
        while not self._stopping:
            snapshot_id = snapshots.next_queued(self.conn)
            if snapshot_id is None:
                return
            await self.scan_lock.acquire()
            try:
                if self._stopping:
                    return
                await self.run_scan(snapshot_id)
            finally:
                self.scan_lock.release()

    def _parent(self):
        """
        ``(parent id, its chain as [(id, log path)], full first)`` of the next
        scan: the newest scanned snapshot of this host, if its logs are all
        here and readable; else ``(None, [])`` (the next log is full and
        every file is read).
        """
        for snapshot_id, log_path in snapshots.newest_scanned(self.conn, self.config.hostname):
            if not os.path.exists(log_path):
                continue
            try:
                return snapshot_id, chain.chain_paths(log_path, chain.db_resolver(self.conn, self.logs_dir))
            except (OSError, snapshotlog.LogFormatError) as e:
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
        if len(parent_chain) >= self.config.backup.full_every:
            return "full", parent, parent_chain
        return "incremental", parent, parent_chain

    async def run_scan(self, snapshot_id):
        started = time.time()
        snapshots.mark_scanning(self.conn, snapshot_id, started)
        self.current = snapshot_id
        self.current_kind = None
        self.progress = ScanProgress(started=started)
        env = {"GRIDBACKUP_SNAPSHOT": snapshot_id}
        if self.config.backup.pre_command:
            self.progress.current = b"(pre_command)"
            ok, why = await deferToThreadPool(
                self.reactor, self.pool, run_command, self.config.backup.pre_command, env)
            if not ok:
                self.current = None
                self.log.warn("pre_command failed, {id} is not scanned: {why}", id=snapshot_id, why=why)
                with dbmod.transaction(self.conn):
                    snapshots.mark_failed(self.conn, snapshot_id, time.time(),
                                          [{"path": None, "reason": "pre_command " + why}])
                    drop_checkpoint(self.conn, snapshot_id, self.logs_dir)
                self.waiters.fire(snapshot_id, "failed")
                return
        try:
            await self._scan(snapshot_id, started)
        finally:
            if self.config.backup.pre_command or self.config.backup.post_command:
                await self._post_command(snapshot_id, env)

    async def _post_command(self, snapshot_id, env):
        """Run post_command whatever became of the scan; a failure is added to its errors."""
        if not self.config.backup.post_command:
            return
        ok, why = await deferToThreadPool(
            self.reactor, self.pool, run_command, self.config.backup.post_command, env)
        if ok:
            return
        self.log.warn("post_command failed after {id}: {why}", id=snapshot_id, why=why)
        snapshots.add_error(self.conn, snapshot_id, {"path": None, "reason": "post_command " + why})

    async def _scan(self, snapshot_id, started):
        kind, parent, parent_chain = self.plan()
        snapshots.set_kind(self.conn, snapshot_id, kind, parent)
        self.current_kind = kind
        self.progress.current = b""
        os.makedirs(self.logs_dir, exist_ok=True)
        log_path = os.path.join(self.logs_dir, snapshot_id + ".log")
        options = ScanOptions(
            roots=self.config.backup.paths,
            exclude=self.config.backup.exclude,
            excluded_dirs=(self.config.state_dir,),
            exclude_if_present=self.config.backup.exclude_if_present,
            exclude_caches=self.config.backup.exclude_caches,
            one_file_system=self.config.backup.one_file_system,
            # The uploader reads (and, once committed, deletes) blobs kept here.
            spool_dir=os.path.join(self.config.state_dir, "spool"),
            tiny_max=self.config.backup.tiny_max,
            chunk_threshold=self.config.backup.chunk_threshold,
        )
        header = LogHeader(
            snapshot=snapshot_id, kind=kind, host=self.config.hostname,
            parent=parent if kind == "incremental" else None,
            paths=tuple(dict.fromkeys(os.fsencode(os.path.normpath(p)) for p in self.config.backup.paths)),
            tags=self._tags(snapshot_id),
            started=started,
        )
        try:
            counts = await deferToThreadPool(
                self.reactor, self.pool, scan_to_log,
                self.db_path, snapshot_id, header, options,
                parent_chain, log_path, self.progress,
            )
        except ScanStopped:
            # The row stays 'scanning' with its checkpoint: the next start
            # resumes it (recover_interrupted).
            self.log.info("scan of {id} stopped at a checkpoint; it resumes at the next start",
                          id=snapshot_id)
            return
        except Exception as e:
            self.log.failure("scan of {id} failed", id=snapshot_id)
            snapshots.mark_failed(self.conn, snapshot_id, time.time(), [{"path": None, "reason": str(e)}])
            self.waiters.fire(snapshot_id, "failed")
            return
        finally:
            self.current = None
        kind = counts["kind"]
        snapshots.mark_uploading(
            self.conn, snapshot_id, kind=kind, parent=parent, started=counts["started"],
            finished=time.time(), files=counts["files"], bytes=counts["bytes"],
            errors=self.progress.error_list(), log_path=log_path,
        )
        self.log.info(
            "scanned {id} ({kind}): {files} files, {bytes} bytes, {records} records, "
            "{errors} errors",
            id=snapshot_id, kind=kind, files=counts["files"], bytes=counts["bytes"],
            records=counts["records"], errors=self.progress.error_count,
        )
        self.on_scanned(snapshot_id)

    def _tags(self, snapshot_id):
        tags = snapshots.tags(self.conn, snapshot_id)
        return tuple(dict.fromkeys(t for t in tags if isinstance(t, str) and t))

    def status(self):
        if self.current is None or self.progress is None:
            return {"running": False}
        p = self.progress
        elapsed = max(time.time() - p.started, 1e-6)
        return {
            "running": True,
            "snapshot": self.current,
            "kind": self.current_kind,
            "entries": p.entries,
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


class _PreviousEntries:
    """
    The previous snapshot's complete entries (its chain merged), for the
    streaming merge.  A damaged previous log only costs reading the files
    after the damage again (``failed`` then says why); an incremental log
    cannot be written against it (see ``scan_to_log``).
    """

    def __init__(self, chain_logs):
        self.failed = None
        self._known = dict(chain_logs)
        self._last = chain_logs[-1][1]
        self._gen = self._entries()
        # An entry whose ctime is a second older than the first scan of the
        # chain was settled when it was recorded (see Scanner).
        self.settled_before = 0
        try:
            started = []
            for _, path in chain_logs:
                with open(path, "rb") as f:
                    started.append(snapshotlog.LogReader(f).header.started)
            self.settled_before = int((min(started) - 1.0) * 1e9)
        except (OSError, snapshotlog.LogFormatError, OverflowError, ValueError):
            pass

    def _entries(self):
        try:
            # The previous snapshot's local logs were checked when this daemon
            # wrote them or recovered them from the grid: read them without
            # the per-entry checks, which are a third of an unchanged rescan.
            with chain.open_chain(self._last, self._known.get, verify=False) as (_, records):
                yield from records
        except (OSError, snapshotlog.LogFormatError) as e:
            self.failed = str(e)
            BackupJobs.log.warn("previous log unusable, reading the rest again: {error}", error=e)

    def __iter__(self):
        return self._gen

    def close(self):
        self._gen.close()


CHECKPOINT_SECONDS = 15.0
COMMAND_TIMEOUT = 3600.0


def run_command(command, env):
    """
    Run a pre- or post-scan shell command (in a worker thread); ``(True,
    "")`` if it exited 0, else ``(False, why)`` with its exit status and the
    last line it wrote to stderr.
    """
    try:
        done = subprocess.run(
            command, shell=True, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=COMMAND_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return False, f"did not finish within {COMMAND_TIMEOUT:g} s"
    except OSError as e:
        return False, f"could not be started: {e.strerror}"
    if done.returncode == 0:
        return True, ""
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    status = (f"exit status {done.returncode}" if done.returncode > 0
              else f"killed by signal {-done.returncode}")
    return False, f"failed ({status})" + (f": {lines[-1][:500]}" if lines else "")


def _fingerprint(header, options, previous_logs):
    """What a checkpoint must agree with to be resumed: the same scan, same settings, same parent."""
    text = repr((
        header.snapshot, header.kind, header.parent, header.host, header.paths, header.tags,
        attr.astuple(options), [i for i, _ in previous_logs],
    ))
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()


load_checkpoint = checkpoints.load


def drop_checkpoint(conn, snapshot_id, logs_dir=None):
    """Forget a scan's checkpoint, and with ``logs_dir`` delete the files it points at."""
    state = checkpoints.load(conn, snapshot_id)
    checkpoints.drop(conn, snapshot_id)
    if state is not None and logs_dir is not None:
        for name in (state["file"], state["file"] + ".links"):
            try:
                os.unlink(os.path.join(logs_dir, name))
            except FileNotFoundError:
                pass


class _Checkpoints:
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
                for k in ("entries", "files", "bytes", "bytes_hashed", "excluded", "error_count")
            },
            "errors": progress.errors,
            "resumes": resumes,
            "time": time.time(),
        }
        with dbmod.transaction(self.conn):
            if batch:
                queue.add_uncommitted(self.conn, self.snapshot_id, batch)
            checkpoints.save(self.conn, self.snapshot_id, state)
        batch.clear()
        self.last = time.monotonic()


def scan_to_log(db_path, snapshot_id, header, options, previous_logs, log_path, progress,
                checkpoint_every=CHECKPOINT_SECONDS):
    """
    In a worker thread: walk, write the log, queue the blobs.  Uses its own
    database connection, in batches, so the reactor's stays free.
    ``previous_logs`` is the chain of the previous snapshot as ``(id, log
    path)`` pairs (full first), or empty.  With ``header.kind``
    incremental, only the differences from it are written; if the previous
    logs turn out damaged, the scan is done again as a full log.

    The scan takes checkpoints (see ``_Checkpoints``); if the database holds
    one for this snapshot that was taken with the same settings and
    parent, the scan resumes after its last path instead of starting over
    (the snapshot's errors then say so).  Returns counts and the kind of
    log written.
    """
    if header.kind == "incremental" and not previous_logs:
        raise ValueError("an incremental log needs its parent's logs")
    conn = dbmod.connect_writer(db_path)
    logs_dir = os.path.dirname(log_path)
    batch = []

    def emit_blob(blob):
        batch.append(blob)
        if len(batch) >= BLOB_BATCH:
            flush()

    def flush():
        with dbmod.transaction(conn):
            queue.add_uncommitted(conn, snapshot_id, batch)
        batch.clear()

    fingerprint = _fingerprint(header, options, previous_logs)
    try:
        try:
            return _scan_to_log(conn, db_path, snapshot_id, header, options, previous_logs,
                                log_path, progress, checkpoint_every, fingerprint, batch,
                                emit_blob, flush, logs_dir)
        except _StartOver:
            with dbmod.transaction(conn):
                drop_checkpoint(conn, snapshot_id, logs_dir)
            progress.restart()
            return _scan_to_log(conn, db_path, snapshot_id, header, options, previous_logs,
                                log_path, progress, checkpoint_every, fingerprint, batch,
                                emit_blob, flush, logs_dir)
    finally:
        conn.close()


class _StartOver(Exception):
    """A checkpoint that cannot be resumed: scan from the beginning."""


def _scan_to_log(conn, db_path, snapshot_id, header, options, previous_logs, log_path,
                 progress, checkpoint_every, fingerprint, batch, emit_blob, flush, logs_dir):
    state = load_checkpoint(conn, snapshot_id)
    resume = None
    if state is not None:
        old = os.path.join(logs_dir, state["file"])
        if state["fingerprint"] == fingerprint and os.path.exists(old) \
                and os.path.getsize(old) >= state["offset"]:
            resume = state
        else:
            BackupJobs.log.info(
                "the checkpoint of {id} does not match this scan; it starts over",
                id=snapshot_id)
            with dbmod.transaction(conn):
                drop_checkpoint(conn, snapshot_id, logs_dir)
    if resume is not None:
        header = attr.evolve(header, started=resume["started"])
        resumes = resume["resumes"] + 1
    else:
        resumes = 0
        # Leftovers of scans of this snapshot that left no usable checkpoint.
        stem = os.path.basename(log_path) + ".tmp"
        for name in os.listdir(logs_dir):
            if name.startswith(stem):
                _unlink(os.path.join(logs_dir, name))
    tmp = f"{log_path}.tmp{resumes}"
    checkpoints = _Checkpoints(conn, snapshot_id, fingerprint, header.started, checkpoint_every)
    previous = _PreviousEntries(previous_logs) if previous_logs else None
    try:
        with open(tmp, "wb") as out, open(tmp + ".links", "wb") as links_out:
            writer = snapshotlog.LogWriter(out, header)
            links = {}
            resume_after = None
            if resume is not None:
                try:
                    resume_after, links = _restore(resume, logs_dir, writer, links_out, progress)
                except (OSError, ValueError) as e:
                    BackupJobs.log.warn(
                        "the checkpoint of {id} is unusable ({error}); the scan starts over",
                        id=snapshot_id, error=e)
                    writer.abort()
                    resume = None
            if resume is None and resumes:
                raise _StartOver()

            def emit_record(record):
                writer.add(record)
                if checkpoints.due():
                    checkpoints.take(writer, out, links_out, scanner, progress, batch, resumes)

            scanner = Scanner(
                options, previous, emit_record, emit_blob, progress,
                incremental=header.kind == "incremental",
                resume_after=resume_after, links=links,
                trust_ctime_before=previous.settled_before if previous is not None else 0,
            )
            if resume is not None:
                # The new file holds the checkpoint's records: from now on
                # it is the one to resume from, and the old one can go.
                checkpoints.take(writer, out, links_out, scanner, progress, batch, resumes)
                for name in (resume["file"], resume["file"] + ".links"):
                    _unlink(os.path.join(logs_dir, name))
            try:
                scanner.run()
            except ScanStopped:
                checkpoints.take(writer, out, links_out, scanner, progress, batch, resumes)
                raise
            if header.kind == "incremental" and previous.failed:
                writer.abort()
            else:
                writer.close()
                out.flush()
                os.fsync(out.fileno())
    finally:
        if previous is not None:
            previous.close()
    if header.kind == "incremental" and previous.failed:
        flush()
        BackupJobs.log.warn("the previous logs of {id} are damaged; a full log is made instead",
                            id=snapshot_id)
        with dbmod.transaction(conn):
            drop_checkpoint(conn, snapshot_id, logs_dir)
        _unlink(tmp)
        _unlink(tmp + ".links")
        progress.restart()
        return scan_to_log(
            db_path, snapshot_id, attr.evolve(header, kind="full", parent=None),
            options, (), log_path, progress, checkpoint_every,
        )
    if batch:
        flush()
    os.replace(tmp, log_path)
    with dbmod.transaction(conn):
        drop_checkpoint(conn, snapshot_id)
    _unlink(tmp + ".links")
    return {
        "kind": header.kind, "files": progress.files, "bytes": progress.bytes,
        "records": writer.records, "changed": scanner.previous.changed,
        "deleted": scanner.previous.deleted, "resumes": resumes,
        "started": header.started,
    }


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _restore(state, logs_dir, writer, links_out, progress):
    """
    Copy a checkpoint's records into ``writer`` and its hard links into
    ``links_out``; set the counters; return (the path to resume after, links).
    """
    path = os.path.join(logs_dir, state["file"])
    with open(path, "rb") as f:
        _, records = snapshotlog.read_partial(f, state["offset"])
        for record in records:
            writer.add(record)
    if writer.records != state["records"]:
        raise snapshotlog.LogFormatError(
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
