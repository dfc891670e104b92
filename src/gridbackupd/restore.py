"""
The restore engine: bring back a snapshot, a sub-tree or one file.

A request is a row in the database; requests run one after another.  The
log is read (from the local copy, else from the grid), each file's blobs are
fetched by ranged GETs from their packs, checked against their SHA-256 and
the file's, and written through ``restorefs.TargetWriter``, which owns
every rule about where writing is allowed.
"""

import hashlib
import json
import os
import secrets
import tempfile
import threading
import time

import attr
import zstandard
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from . import db as dbmod
from . import packer, restoreplan, snapshotlog
from .errors import APIError, TahoeError
from .model import DIR, FILE, HARDLINK, SYMLINK
from .restorefs import TargetWriter, UnsafePath
from .waiters import Waiters

PARALLEL_SPANS = 4


@attr.define
class RestoreProgress:
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    errors: list = attr.Factory(list)
    pending: list = attr.Factory(list)


def selected(path, wanted):
    """Whether ``path`` is one of ``wanted`` or below one of them."""
    if not wanted:
        return True
    for w in wanted:
        if path == w or path.startswith(w.rstrip(b"/") + b"/"):
            return True
    return False


def _load_entries(log_path, wanted):
    with open(log_path, "rb") as f:
        header, records = snapshotlog.read_log(f)
        return header, [e for e in records if selected(e.path, wanted)]


class Restorer:
    log = Logger()

    def __init__(self, reactor, conn, client_getter, pool, tmpdir):
        self.reactor = reactor
        self.conn = conn
        self.client_getter = client_getter
        self.pool = pool
        self.tmpdir = tmpdir
        self.progress = {}
        self._running = None
        self._stopping = False
        self.waiters = Waiters()

    # -- requests ------------------------------------------------------------

    def resolve_snapshot(self, spec):
        """'latest' or an id -> (id, log_path, log_cap); APIError 404 if unknown."""
        if spec == "latest":
            row = self.conn.execute(
                "SELECT id, log_path, log_cap FROM snapshots WHERE complete = 1 "
                "ORDER BY id DESC LIMIT 1"
            ).fetchone()
        else:
            row = self.conn.execute(
                "SELECT id, log_path, log_cap FROM snapshots WHERE id = ? AND log_path IS NOT NULL",
                (spec,),
            ).fetchone()
        if row is None:
            raise APIError(404, "unknown_snapshot", f"no snapshot {spec!r} to restore from")
        return row

    def request(self, snapshot, paths, target, overwrite=False):
        snapshot_id, _, _ = self.resolve_snapshot(snapshot)
        restore_id = "r-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)
        with dbmod.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO restores (id, snapshot, paths, target, state, created) "
                "VALUES (?, ?, ?, ?, 'queued', ?)",
                (restore_id, snapshot_id,
                 json.dumps({"paths": paths, "overwrite": overwrite}), target, time.time()),
            )
        self.kick()
        return restore_id

    def recover_interrupted(self):
        with dbmod.transaction(self.conn):
            self.conn.execute("UPDATE restores SET state = 'queued' WHERE state = 'running'")

    def kick(self):
        if self._running is None:
            self._running = Deferred.fromCoroutine(self._run_queued())
            self._running.addErrback(lambda f: self.log.failure("restore runner failed", f))

            def finished(result):
                self._running = None
                return result

            self._running.addBoth(finished)

    def status(self, restore_id):
        row = self.conn.execute(
            "SELECT id, snapshot, target, state, created, finished, files_done, files_total, "
            "bytes_done, bytes_total, errors FROM restores WHERE id = ?",
            (restore_id,),
        ).fetchone()
        if row is None:
            raise APIError(404, "unknown_restore", f"no restore {restore_id!r}")
        result = dict(zip(
            ("id", "snapshot", "target", "state", "created", "finished", "files_done",
             "files_total", "bytes_done", "bytes_total", "errors"), row))
        result["errors"] = json.loads(result["errors"])
        live = self.progress.get(restore_id)
        if live is not None:
            result.update(
                files_done=live.files_done, files_total=live.files_total,
                bytes_done=live.bytes_done, bytes_total=live.bytes_total,
                errors=list(live.errors),
            )
        return result

    # -- running ---------------------------------------------------------------

    def stop(self):
        """Stop after the files being written; an unfinished restore resumes on the next start."""
        self._stopping = True
        return self._running

    async def _run_queued(self):
        while not self._stopping:
            row = self.conn.execute(
                "SELECT id, snapshot, paths, target FROM restores WHERE state = 'queued' "
                "ORDER BY created LIMIT 1"
            ).fetchone()
            if row is None:
                return
            restore_id, snapshot_id, options, target = row
            options = json.loads(options)
            progress = self.progress[restore_id] = RestoreProgress()
            self._set_state(restore_id, "running")
            try:
                await self.run(snapshot_id, options["paths"], target, options["overwrite"], progress)
                state = "done" if not progress.errors else "failed"
            except Exception as e:
                self.log.failure("restore {id} failed", id=restore_id)
                progress.errors.append({"path": None, "reason": str(e)})
                state = "failed"
            if self._stopping:
                return
            self._set_state(restore_id, state, progress)
            del self.progress[restore_id]
            self.waiters.fire(restore_id, state)

    def _set_state(self, restore_id, state, progress=None):
        with dbmod.transaction(self.conn):
            if progress is None:
                self.conn.execute("UPDATE restores SET state = ? WHERE id = ?", (state, restore_id))
            else:
                self.conn.execute(
                    "UPDATE restores SET state = ?, finished = ?, files_done = ?, files_total = ?, "
                    "bytes_done = ?, bytes_total = ?, errors = ? WHERE id = ?",
                    (state, time.time(), progress.files_done, progress.files_total,
                     progress.bytes_done, progress.bytes_total,
                     json.dumps(progress.errors + progress.pending), restore_id),
                )

    async def _log_file(self, snapshot_id):
        """A local path of the snapshot's log, downloading it if needed."""
        _, log_path, log_cap = self.resolve_snapshot(snapshot_id)
        if log_path and os.path.exists(log_path):
            return log_path, False
        if not log_cap:
            raise APIError(404, "unknown_snapshot", f"the log of {snapshot_id} is not available")
        os.makedirs(self.tmpdir, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=self.tmpdir, suffix=".log")
        with os.fdopen(fd, "wb") as f:
            await self.client_getter().download_to(log_cap, f)
        return path, True

    async def run(self, snapshot_id, paths, target, overwrite, progress):
        wanted = [os.fsencode(p) for p in (paths or [])]
        log_path, temporary = await self._log_file(snapshot_id)
        try:
            _, entries = await deferToThreadPool(
                self.reactor, self.pool, _load_entries, log_path, wanted
            )
        finally:
            if temporary:
                os.unlink(log_path)
        files = [e for e in entries if e.kind == FILE]
        progress.files_total = len(files)
        progress.bytes_total = sum(e.size for e in files)
        writer = await deferToThreadPool(self.reactor, self.pool, TargetWriter, target, overwrite)
        try:
            dirs = [e for e in entries if e.kind == DIR]
            for entry in dirs:
                await self._guard(progress, entry, writer.make_dir, entry)
            await self._restore_files(writer, files, progress)
            for entry in entries:
                if entry.kind == SYMLINK:
                    await self._guard(progress, entry, writer.make_symlink, entry)
                elif entry.kind == HARDLINK:
                    await self._guard(progress, entry, writer.make_hardlink, entry)
                elif entry.kind not in (FILE, DIR):
                    await self._guard(progress, entry, writer.make_special, entry)
            # Directory metadata last, deepest first, so writing into them
            # does not change their times again.
            for entry in reversed(dirs):
                await self._guard(progress, entry, writer.finish_dir, entry)
        finally:
            writer.close()

    async def _guard(self, progress, entry, fn, *args):
        try:
            return await deferToThreadPool(self.reactor, self.pool, fn, *args)
        except (OSError, UnsafePath) as e:
            progress.errors.append({"path": os.fsdecode(entry.path), "reason": str(e)})

    def _locate(self, blob_hash):
        row = self.conn.execute(
            "SELECT p.cap, b.offset, b.length, b.compression FROM blobs b "
            "JOIN packs p ON p.id = b.pack_id WHERE b.hash = ? AND p.cap IS NOT NULL",
            (blob_hash,),
        ).fetchone()
        return None if row is None else tuple(row)

    async def _restore_files(self, writer, files, progress):
        """Regular files: inline ones directly, the rest pack by pack."""
        jobs, spans, pending = restoreplan.plan(files, self._locate)
        for entry in pending:
            progress.pending.append(
                {"path": os.fsdecode(entry.path), "reason": "content not uploaded yet"})
        apply = _SpanWriter(writer, progress)
        for job in jobs:
            if job.remaining == 0:
                await self._guard(progress, job.entry, apply.write_inline, job)
        sem = DeferredSemaphore(PARALLEL_SPANS)
        await gatherResults([
            sem.run(lambda span=span: Deferred.fromCoroutine(self._fetch_span(apply, span, progress)))
            for span in spans
        ])
        await deferToThreadPool(self.reactor, self.pool, apply.abort_unfinished, jobs)

    async def _fetch_span(self, apply, span, progress):
        if self._stopping:
            return
        try:
            data = await self.client_getter().download(span.cap, span.start, span.end - span.start)
        except TahoeError as e:
            apply.fail_span(span, f"cannot fetch content from the grid: {e}")
            return
        await deferToThreadPool(self.reactor, self.pool, apply.write_span, span, data)


class _SpanWriter:
    """
    Writes fetched spans into their files, from worker threads.  A file is
    opened at its first blob and committed (renamed into place with its
    metadata) after its last; a file whose blob fails is aborted.
    """

    def __init__(self, writer, progress):
        self.writer = writer
        self.progress = progress
        self.lock = threading.Lock()

    def _error(self, job, reason):
        if not job.failed:
            job.failed = True
            self.progress.errors.append({"path": os.fsdecode(job.entry.path), "reason": reason})

    def _open(self, job):
        """Under the lock: the job's open file, or None if it must not be written."""
        if job.failed or job.skipped:
            return None
        if job.out is None:
            try:
                job.out = self.writer.open_file(job.entry)
            except (OSError, UnsafePath) as e:
                self._error(job, str(e))
                return None
            if job.out is None:
                job.skipped = True
                self.progress.errors.append({"path": os.fsdecode(job.entry.path),
                                             "reason": "exists in the target (overwrite is off)"})
                return None
        return job.out

    def _finish(self, job):
        """Under the lock: commit a job whose writes are all done."""
        try:
            job.out.commit()
            self.progress.files_done += 1
        except OSError as e:
            self._error(job, str(e))
        job.out = None

    def write_inline(self, job):
        with self.lock:
            out = self._open(job)
            if out is None:
                return
            if job.entry.inline:
                out.write(0, job.entry.inline)
                self.progress.bytes_done += len(job.entry.inline)
            self._finish(job)

    def write_span(self, span, data):
        for read in span.reads:
            stored = data[read.offset - span.start:read.offset - span.start + read.length]
            try:
                blob = _decode_checked(stored, read.compression, read.size, read.hash)
            except (packer.PackFormatError, _Corrupt, zstandard.ZstdError) as e:
                with self.lock:
                    for job, _ in read.targets:
                        self._error(job, str(e))
                continue
            for job, file_offset in read.targets:
                with self.lock:
                    out = self._open(job)
                if out is None:
                    continue
                try:
                    out.write(file_offset, blob)
                except OSError as e:
                    with self.lock:
                        self._error(job, str(e))
                    continue
                with self.lock:
                    self.progress.bytes_done += read.size
                    job.remaining -= 1
                    if job.remaining == 0 and not job.failed:
                        self._finish(job)

    def fail_span(self, span, reason):
        with self.lock:
            for read in span.reads:
                for job, _ in read.targets:
                    self._error(job, reason)

    def abort_unfinished(self, jobs):
        for job in jobs:
            if job.out is not None:
                job.out.abort()
                job.out = None


class _Corrupt(Exception):
    """Content fetched from the grid is not what the snapshot says."""


def _decode_checked(stored, compression, size, expected):
    data = packer.decode_blob(stored, compression, size)
    if hashlib.sha256(data).hexdigest() != expected:
        raise _Corrupt(f"blob {expected[:12]} does not match its SHA-256")
    return data
