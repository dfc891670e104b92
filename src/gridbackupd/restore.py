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
import time

import attr
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from . import db as dbmod
from . import packer, snapshotlog
from .errors import APIError, TahoeError
from .model import DIR, FILE, HARDLINK, SYMLINK
from .restorefs import TargetWriter, UnsafePath
from .waiters import Waiters

PARALLEL_FILES = 8


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
            sem = DeferredSemaphore(PARALLEL_FILES)
            await gatherResults([
                sem.run(lambda e=e: Deferred.fromCoroutine(self._guard_async(writer, progress, e)))
                for e in files
            ])
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

    async def _guard_async(self, writer, progress, entry):
        if self._stopping:
            return
        try:
            await self.restore_file(writer, entry, progress)
        except (OSError, UnsafePath, TahoeError, packer.PackFormatError, _Corrupt) as e:
            progress.errors.append({"path": os.fsdecode(entry.path), "reason": str(e)})

    def _locations(self, entry):
        result = []
        for h, size in entry.blobs:
            row = self.conn.execute(
                "SELECT p.cap, b.offset, b.length, b.compression FROM blobs b "
                "JOIN packs p ON p.id = b.pack_id WHERE b.hash = ? AND p.cap IS NOT NULL",
                (h,),
            ).fetchone()
            result.append(None if row is None else (h, size) + tuple(row))
        return result

    async def restore_file(self, writer, entry, progress):
        """Fetch, check and write one regular file."""
        locations = self._locations(entry)
        if any(loc is None for loc in locations):
            progress.pending.append(
                {"path": os.fsdecode(entry.path), "reason": "content not uploaded yet"}
            )
            return
        out = await deferToThreadPool(self.reactor, self.pool, writer.open_file, entry)
        if out is None:
            progress.errors.append(
                {"path": os.fsdecode(entry.path), "reason": "exists in the target (overwrite is off)"}
            )
            return
        try:
            whole = hashlib.sha256()
            if entry.inline is not None:
                whole.update(entry.inline)
                await deferToThreadPool(self.reactor, self.pool, out.write, 0, entry.inline)
            offset = 0
            client = self.client_getter()
            for h, size, cap, pack_offset, length, compression in locations:
                stored = await client.download(cap, pack_offset, length)
                data = await deferToThreadPool(
                    self.reactor, self.pool, _decode_checked, stored, compression, size, h
                )
                whole.update(data)
                await deferToThreadPool(self.reactor, self.pool, out.write, offset, data)
                offset += size
                progress.bytes_done += size
            if entry.sha256 is not None and whole.hexdigest() != entry.sha256:
                raise _Corrupt("restored content does not match the file's SHA-256")
            await deferToThreadPool(self.reactor, self.pool, out.commit)
            out = None
            progress.files_done += 1
        finally:
            if out is not None:
                await deferToThreadPool(self.reactor, self.pool, out.abort)


class _Corrupt(Exception):
    """Content fetched from the grid is not what the snapshot says."""


def _decode_checked(stored, compression, size, expected):
    data = packer.decode_blob(stored, compression, size)
    if hashlib.sha256(data).hexdigest() != expected:
        raise _Corrupt(f"blob {expected[:12]} does not match its SHA-256")
    return data
