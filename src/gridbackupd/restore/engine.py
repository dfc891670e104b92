"""
The restore engine: bring back a snapshot, a sub-tree or one file.

A request is a row in the database; requests run one after another.  The
log is read (from the local copy, else from the grid), each file's blobs are
fetched by ranged GETs from their packs, checked against their SHA-256 and
the file's, and written through ``restorefs.TargetWriter``, which owns
every rule about where writing is allowed.
"""

import datetime
import hashlib
import json
import os
import secrets
import tempfile
import threading
import time

import attr
import zstandard
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from gridbackupd.errors import APIError, TahoeError
from gridbackupd.format import log as snapshotlog
from gridbackupd.model import DIR, FILE, HARDLINK, SYMLINK
from gridbackupd.restore import plan as restoreplan
from gridbackupd.restore.targetfs import TargetWriter, UnsafePath, VerifyFailed
from gridbackupd.state import db as dbmod
from gridbackupd.upload import packer
from gridbackupd.waiters import SerialRunner, Waiters

PARALLEL_SPANS = 4


@attr.define
class RestoreProgress:
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    errors: list = attr.Factory(list)
    pending: list = attr.Factory(list)
    cancelled: bool = False
    plan: dict | None = None
    files_verified: int | None = None


def within(path, wanted):
    """Whether ``path`` is one of ``wanted`` or below one of them."""
    if not wanted:
        return True
    for w in wanted:
        if path == w or path.startswith(w.rstrip(b"/") + b"/"):
            return True
    return False


def selected(path, wanted):
    """
    Whether a restore of ``wanted`` reads the entry at ``path``: one of them,
    below one, or above one (a directory on the way, whose mode and times
    the restore sets as the snapshot has them; ``run`` keeps only the
    directories among those).
    """
    if within(path, wanted):
        return True
    return any(path == b"/" or w.startswith(path + b"/") for w in wanted)


def _load_entries(log_path, wanted):
    # An incremental log is merged with its parents' logs (local, <id>.log
    # next to it): chain.open_chain yields the snapshot's complete entries.
    from gridbackupd.format.chain import open_chain

    with open_chain(log_path) as (header, records):
        return header, [e for e in records if selected(e.path, wanted)]


class Cancelled(Exception):
    """The restore was cancelled (DELETE /v1/restores/{id})."""


FINAL_STATES = ("done", "failed", "cancelled")


def parse_time(text):
    """An ISO 8601 time (a zone is optional: UTC is assumed) -> seconds since the epoch."""
    if not isinstance(text, str) or not text:
        raise APIError(400, "bad_request", "as_of must be an ISO 8601 time such as 2026-01-31T12:00:00Z")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise APIError(400, "bad_request", f"as_of is not an ISO 8601 time: {text!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def check_snapshot_spec(spec):
    """'latest', an id, or {"as_of": time}; APIError 400 for anything else."""
    if isinstance(spec, str) and spec:
        return spec
    if isinstance(spec, dict) and set(spec) == {"as_of"}:
        parse_time(spec["as_of"])
        return spec
    raise APIError(400, "bad_request",
                   'snapshot must be "latest", a snapshot id, or {"as_of": "<ISO 8601 time>"}')


class Restorer:
    log = Logger()

    def __init__(self, reactor, conn, client_getter, pool, tmpdir, hostname=None):
        self.reactor = reactor
        self.conn = conn
        self.client_getter = client_getter
        self.pool = pool
        self.tmpdir = tmpdir
        self.hostname = hostname
        self.progress = {}
        self._runner = SerialRunner(self._run_queued, self.log, "restore runner")
        self._stopping = False
        self.waiters = Waiters()

    # -- requests ------------------------------------------------------------

    def resolve_snapshot(self, spec):
        """
        'latest', an id or {"as_of": ISO time} -> (id, log_path, log_cap);
        APIError 404 if there is no such snapshot.  'latest' and as_of pick
        complete snapshots only; an id may name an unfinished one (what is
        uploaded is restored, the rest is listed as pending).
        """
        spec = check_snapshot_spec(spec)
        if spec == "latest":
            # This host's newest; another host's only if this one has none
            # (a new machine restoring the old one's backups).
            row = self.conn.execute(
                "SELECT id, log_path, log_cap FROM snapshots WHERE complete = 1 "
                "ORDER BY host = ? DESC, id DESC LIMIT 1",
                (self.hostname,),
            ).fetchone()
        elif isinstance(spec, dict):
            row = self.conn.execute(
                "SELECT id, log_path, log_cap FROM snapshots WHERE complete = 1 "
                "AND coalesce(started, requested) <= ? ORDER BY host = ? DESC, id DESC LIMIT 1",
                (parse_time(spec["as_of"]), self.hostname),
            ).fetchone()
        else:
            row = self.conn.execute(
                "SELECT id, log_path, log_cap FROM snapshots WHERE id = ? "
                "AND (log_path IS NOT NULL OR log_cap IS NOT NULL)",
                (spec,),
            ).fetchone()
        if row is None:
            raise APIError(404, "unknown_snapshot", f"no snapshot {spec!r} to restore from")
        return row

    def request(self, snapshot, paths, target, overwrite=False, dry_run=False, verify=False):
        snapshot_id, _, _ = self.resolve_snapshot(snapshot)
        restore_id = "r-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)
        options = {"paths": paths, "overwrite": overwrite, "dry_run": dry_run, "verify": verify}
        with dbmod.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO restores (id, snapshot, paths, target, state, created) "
                "VALUES (?, ?, ?, ?, 'queued', ?)",
                (restore_id, snapshot_id, json.dumps(options), target, time.time()),
            )
        self.kick()
        return restore_id

    def cancel(self, restore_id):
        """
        Cancel a queued or running restore.  A running one stops between
        spans: files not finished are removed (their temporary files), files
        already in place stay.  Cancelling a cancelled one is a no-op;
        a finished one is a 409.
        """
        row = self.conn.execute("SELECT state FROM restores WHERE id = ?", (restore_id,)).fetchone()
        if row is None:
            raise APIError(404, "unknown_restore", f"no restore {restore_id!r}")
        state = row[0]
        if state in ("done", "failed"):
            raise APIError(409, "restore_finished", f"restore {restore_id} has already finished ({state})")
        live = self.progress.get(restore_id)
        if live is not None:
            live.cancelled = True
        elif state == "queued" or state == "running":
            self._set_state(restore_id, "cancelled", RestoreProgress())
            self.waiters.fire(restore_id, "cancelled")
        return self.status(restore_id)

    def recover_interrupted(self):
        with dbmod.transaction(self.conn):
            self.conn.execute("UPDATE restores SET state = 'queued' WHERE state = 'running'")

    def kick(self):
        if not self._stopping:
            self._runner.kick()

    def wait(self, restore_id):
        """Fires with the end state of a restore: done, failed or cancelled."""
        row = self.conn.execute("SELECT state FROM restores WHERE id = ?", (restore_id,)).fetchone()
        if row is not None and row[0] in FINAL_STATES:
            return succeed(row[0])
        return self.waiters.wait(restore_id)

    def status(self, restore_id):
        row = self.conn.execute(
            "SELECT id, snapshot, paths, target, state, created, finished, files_done, files_total, "
            "bytes_done, bytes_total, errors, result FROM restores WHERE id = ?",
            (restore_id,),
        ).fetchone()
        if row is None:
            raise APIError(404, "unknown_restore", f"no restore {restore_id!r}")
        result = dict(zip(
            ("id", "snapshot", "options", "target", "state", "created", "finished", "files_done",
             "files_total", "bytes_done", "bytes_total", "errors", "result"), row))
        options = json.loads(result.pop("options"))
        extra = json.loads(result.pop("result") or "{}")
        result["paths"] = options.get("paths") or []
        for key in ("overwrite", "dry_run", "verify"):
            result[key] = bool(options.get(key, False))
        result["errors"] = json.loads(result["errors"])
        result["pending"] = extra.get("pending", [])
        if "plan" in extra:
            result["plan"] = extra["plan"]
        if "files_verified" in extra:
            result["files_verified"] = extra["files_verified"]
        live = self.progress.get(restore_id)
        if live is not None:
            result.update(
                files_done=live.files_done, files_total=live.files_total,
                bytes_done=live.bytes_done, bytes_total=live.bytes_total,
                errors=list(live.errors), pending=list(live.pending),
            )
            if live.cancelled:
                result["cancel_requested"] = True
        return result

    # -- running ---------------------------------------------------------------

    def stop(self):
        """Stop after the files being written; an unfinished restore resumes on the next start."""
        self._stopping = True
        return self._runner.running

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
                await self.run(
                    snapshot_id, options["paths"], target, options["overwrite"], progress,
                    dry_run=options.get("dry_run", False), verify=options.get("verify", False),
                )
                state = "done" if not progress.errors else "failed"
            except Cancelled:
                state = "cancelled"
            except (snapshotlog.LogFormatError, APIError, TahoeError, OSError, UnsafePath) as e:
                # Bad snapshot data, a grid or a target that fails us: the
                # restore's errors say it; no traceback needed.
                if self._stopping:
                    return
                self.log.warn("restore {id} failed: {error}", id=restore_id, error=str(e))
                progress.errors.append({"path": None, "reason": str(e)})
                state = "failed"
            except Exception as e:
                if self._stopping:
                    return
                self.log.failure("restore {id} failed", id=restore_id)
                progress.errors.append({"path": None, "reason": str(e)})
                state = "failed"
            if self._stopping and state != "cancelled":
                return
            self._set_state(restore_id, state, progress)
            del self.progress[restore_id]
            self.log.info("restore {id}: {state}, {files} files, {errors} errors, {pending} pending",
                          id=restore_id, state=state, files=progress.files_done,
                          errors=len(progress.errors), pending=len(progress.pending))
            self.waiters.fire(restore_id, state)

    def _set_state(self, restore_id, state, progress=None):
        with dbmod.transaction(self.conn):
            if progress is None:
                self.conn.execute("UPDATE restores SET state = ? WHERE id = ?", (state, restore_id))
            else:
                extra = {"pending": progress.pending}
                if progress.plan is not None:
                    extra["plan"] = progress.plan
                if progress.files_verified is not None:
                    extra["files_verified"] = progress.files_verified
                self.conn.execute(
                    "UPDATE restores SET state = ?, finished = ?, files_done = ?, files_total = ?, "
                    "bytes_done = ?, bytes_total = ?, errors = ?, result = ? WHERE id = ?",
                    (state, time.time(), progress.files_done, progress.files_total,
                     progress.bytes_done, progress.bytes_total,
                     json.dumps(progress.errors), json.dumps(extra), restore_id),
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
        try:
            with os.fdopen(fd, "wb") as f:
                await self.client_getter().download_to(log_cap, f)
        except BaseException:
            os.unlink(path)
            raise
        return path, True

    def _check_cancelled(self, progress):
        if progress.cancelled:
            raise Cancelled()

    async def run(self, snapshot_id, paths, target, overwrite, progress, dry_run=False, verify=False):
        wanted = [os.fsencode(p) for p in (paths or [])]
        log_path, temporary = await self._log_file(snapshot_id)
        try:
            _, entries = await deferToThreadPool(
                self.reactor, self.pool, _load_entries, log_path, wanted
            )
        finally:
            if temporary:
                os.unlink(log_path)
        self._check_cancelled(progress)
        if wanted:
            entries = [e for e in entries if e.kind == DIR or within(e.path, wanted)]
        files = [e for e in entries if e.kind == FILE]
        progress.files_total = len(files)
        progress.bytes_total = sum(e.size for e in files)
        if dry_run:
            progress.plan = await self._plan_summary(entries, files, progress)
            return
        writer = await deferToThreadPool(self.reactor, self.pool, TargetWriter, target, overwrite)
        try:
            dirs = [e for e in entries if e.kind == DIR]
            await self._each(progress, dirs, writer.make_dir)
            jobs = await self._restore_files(writer, files, progress)
            if self._stopping:
                return
            self._check_cancelled(progress)
            makers = {SYMLINK: writer.make_symlink, HARDLINK: writer.make_hardlink}
            for entry in entries:
                if entry.kind == HARDLINK and not within(entry.target, wanted):
                    progress.errors.append({
                        "path": os.fsdecode(entry.path),
                        "reason": f"a hard link to {os.fsdecode(entry.target)}, which this restore "
                                  "does not include: restore that path too"})
            entries = [e for e in entries if e.kind != HARDLINK or within(e.target, wanted)]
            await self._each(progress, [e for e in entries if e.kind not in (FILE, DIR)],
                             lambda e: makers.get(e.kind, writer.make_special)(e))
            # Directory metadata last, deepest first, so writing into them
            # does not change their times again.
            await self._each(progress, dirs[::-1], writer.finish_dir)
            if verify:
                await self._verify(writer, jobs, progress)
        finally:
            for path, reason in writer.warnings:
                progress.errors.append({"path": os.fsdecode(path), "reason": reason})
            writer.close()

    async def _plan_summary(self, entries, files, progress):
        jobs, spans, pending = await self._plan(files)
        for entry in pending:
            progress.pending.append(
                {"path": os.fsdecode(entry.path), "reason": "content not uploaded yet"})
        kinds = {}
        for entry in entries:
            kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
        return {
            "files": len(files),
            "bytes": sum(e.size for e in files),
            "entries": dict(sorted(kinds.items())),
            "packs": len({s.cap for s in spans}),
            "gets": len(spans),
            "fetch_bytes": sum(s.end - s.start for s in spans),
            "inline_files": sum(1 for j in jobs if j.remaining == 0),
            "pending_files": len(pending),
        }

    async def _verify(self, writer, jobs, progress):
        progress.files_verified = 0

        def verify(entry):
            try:
                writer.verify_file(entry)
                progress.files_verified += 1
            except VerifyFailed as e:
                raise OSError(f"verify: {e}")

        await self._each(progress, [j.entry for j in jobs if j.done], verify)

    # Entries are handed to the worker thread in batches: one thread hop
    # per entry cost more than the work itself for small files.
    BATCH = 256

    async def _each(self, progress, items, fn, path_of=lambda e: e.path):
        """fn(item) for each item, in a worker thread, a batch at a time;
        an OSError or UnsafePath is that item's error, and the rest go on."""
        def batch(chunk):
            for item in chunk:
                if progress.cancelled or self._stopping:
                    return
                try:
                    fn(item)
                except (OSError, UnsafePath) as e:
                    progress.errors.append({"path": os.fsdecode(path_of(item)), "reason": str(e)})

        for start in range(0, len(items), self.BATCH):
            self._check_cancelled(progress)
            if self._stopping:
                return
            await deferToThreadPool(self.reactor, self.pool, batch, items[start:start + self.BATCH])

    def _plan(self, files):
        """
        restoreplan.plan in a worker thread, on a connection of its own:
        one index look-up per blob is seconds of work for a large restore,
        which must not stall the API.
        """
        db_path = self.conn.execute("PRAGMA database_list").fetchone()[2]
        return deferToThreadPool(self.reactor, self.pool, _plan_with_own_connection, db_path, files)

    async def _restore_files(self, writer, files, progress):
        """Regular files: inline ones directly, the rest pack by pack."""
        jobs, spans, pending = await self._plan(files)
        for entry in pending:
            progress.pending.append(
                {"path": os.fsdecode(entry.path), "reason": "content not uploaded yet"})
        apply = _SpanWriter(writer, progress)
        try:
            await self._each(progress, [j for j in jobs if j.remaining == 0 or j.direct],
                             apply.write_direct, path_of=lambda j: j.entry.path)
            sem = DeferredSemaphore(PARALLEL_SPANS)
            await gatherResults([
                sem.run(lambda span=span: Deferred.fromCoroutine(self._fetch_span(apply, span, progress)))
                for span in spans
            ])
        finally:
            await deferToThreadPool(self.reactor, self.pool, apply.abort_unfinished, jobs)
        return jobs

    async def _fetch_span(self, apply, span, progress):
        if self._stopping or progress.cancelled:
            return
        try:
            data = await self.client_getter().download(span.cap, span.start, span.end - span.start)
        except TahoeError as e:
            apply.fail_span(span, f"cannot fetch content from the grid: {e}")
            return
        await deferToThreadPool(self.reactor, self.pool, apply.write_span, span, data)


def locate(conn, blob_hash):
    """(pack cap, offset, length, compression), the bytes of a blob the
    index holds inline, or None when the blob is not uploaded yet."""
    row = conn.execute(
        "SELECT p.cap, b.offset, b.length, b.compression, b.inline_data FROM blobs b "
        "LEFT JOIN packs p ON p.id = b.pack_id WHERE b.hash = ?",
        (blob_hash,),
    ).fetchone()
    if row is None:
        return None
    if row[4] is not None:
        return bytes(row[4])
    if row[0] is None:
        return None
    return tuple(row[:4])


def _plan_with_own_connection(db_path, files):
    with dbmod.worker_connection(db_path) as conn:
        return restoreplan.plan(files, lambda blob_hash: locate(conn, blob_hash))


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
                if self.writer.matches(job.entry):
                    # Already there, same size and time: a restore resumed
                    # after a restart, or run twice.  Not an error.
                    self.progress.files_done += 1
                    self.progress.bytes_done += job.entry.size
                    return None
                self.progress.errors.append({"path": os.fsdecode(job.entry.path),
                                             "reason": "exists in the target (overwrite is off)"})
                return None
        return job.out

    def _finish(self, job):
        """Under the lock: commit a job whose writes are all done."""
        try:
            job.out.commit()
            job.done = True
            self.progress.files_done += 1
        except OSError as e:
            self._error(job, str(e))
        job.out = None

    def write_direct(self, job):
        """The content that needs no download: the log's inline bytes, the
        index's inline blobs (checked against their SHA-256)."""
        with self.lock:
            out = self._open(job)
            if out is None:
                return
            if job.entry.inline:
                out.write(0, job.entry.inline)
                self.progress.bytes_done += len(job.entry.inline)
            for file_offset, expected, data in job.direct:
                if hashlib.sha256(data).hexdigest() != expected:
                    self._error(job, f"blob {expected[:12]} does not match its SHA-256 (corrupt index)")
                    return
                out.write(file_offset, data)
                self.progress.bytes_done += len(data)
            if job.remaining == 0:
                self._finish(job)

    def write_span(self, span, data):
        if len(data) != span.end - span.start:
            self.fail_span(span, f"the grid returned {len(data)} bytes of a {span.end - span.start}-byte range")
            return
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
        raise _Corrupt(f"blob {expected[:12]} does not match its SHA-256 (corrupt content on the grid)")
    return data
