"""
The restore engine: bring back a snapshot, a sub-tree or one file.

The log is read (from the local copy, else from the grid), a plan
(``restore.plan``) says which ranges of which packs to fetch, each span is
fetched by a ranged GET and its blobs checked against their SHA-256 and
written by a ``SpanWriter`` through ``restore.targetfs.TargetWriter``,
which owns every rule about where writing is allowed.  The queue of
requests that feeds it is ``restore.requests``.
"""

import os
import tempfile

import attr
from twisted.internet.defer import DeferredList, DeferredSemaphore
from twisted.internet.threads import deferToThreadPool

from gridbackupd.errors import NotFound, TahoeError, Unavailable
from gridbackupd.format import hardlinks
from gridbackupd.format.logframe import MAX_LOG
from gridbackupd.model import DIR, FILE, HARDLINK, SYMLINK
from gridbackupd.restore import plan as restoreplan
from gridbackupd.restore.gridwait import DEFAULT_TIMEOUT, GridWait
from gridbackupd.restore.spans import SpanWriter
from gridbackupd.restore.targetfs import TargetWriter, UnsafePath, VerifyFailed
from gridbackupd.state import blobs as blobstate
from gridbackupd.state import db as dbmod
from gridbackupd.state import snapshots

PARALLEL_SPANS = 4


@attr.define
class RestoreProgress:
    """How far a restore is: figures, errors and pending files (live, then stored with its end state)."""

    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    errors: list = attr.Factory(list)
    pending: list = attr.Factory(list)
    cancelled: bool = False
    plan: dict | None = None
    files_verified: int | None = None
    # "grid" while the run waits for a grid that is away, and since when (epoch seconds).
    waiting_for: str | None = None
    waiting_since: float | None = None
    # Files whose set-uid/set-gid bits were dropped: the owner was not restored (not root).
    setid_dropped: int = 0
    # Files the target already held as the snapshot has them (checked by content): left as they are.
    unchanged: int = 0


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


def missing(entries, wanted):
    """Those of ``wanted`` that no entry is at or below (``/`` never is missing), in their order."""
    left = set(wanted) - {b"/"}
    for entry in entries:
        if not left:
            break
        path = entry.path
        while path != b"/":
            left.discard(path)
            path = path.rsplit(b"/", 1)[0] or b"/"
    return [w for w in dict.fromkeys(wanted) if w in left]


def hard_links(entries, wanted):
    """
    The hard links among ``entries`` to make, each with its target replaced
    by the end of its chain (``hardlinks.follow``), and ``(path, reason)``
    of those refused: a target outside ``wanted``, a cycle, a chain too
    long.  One pass over the entries, then a bounded walk per link; only
    the entries that links point at are kept aside.
    """
    targets = {e.target for e in entries if e.kind == HARDLINK}
    if not targets:
        return [], []
    by_path = {e.path: e for e in entries if e.path in targets}
    links, refused = [], []
    for entry in entries:
        if entry.kind != HARDLINK:
            continue
        if not within(entry.target, wanted):
            refused.append((entry.path, f"a hard link to {os.fsdecode(entry.target)}, which this "
                                        "restore does not include: restore that path too"))
            continue
        try:
            final = hardlinks.follow(entry, by_path.get, missing="is not in this restore")
        except hardlinks.LinkError as e:
            refused.append((entry.path, str(e)))
            continue
        links.append(attr.evolve(entry, target=final.path))
    return links, refused


def _load_entries(log_path, wanted):
    # An incremental log is merged with its parents' logs (local, <id>.log
    # next to it): chain.open_chain yields the snapshot's complete entries.
    from gridbackupd.format.chain import open_chain

    with open_chain(log_path) as (header, records):
        return header, [e for e in records if selected(e.path, wanted)]


class Cancelled(Exception):
    """The restore was cancelled (DELETE /v1/restores/{id})."""


class RestoreEngine:
    """
    Runs one restore at a time for its caller (the request queue, a drill);
    ``stopping`` set makes it put down its work between batches and spans.
    """

    def __init__(self, reactor, conn, client_getter, pool, tmpdir, grid_wait=DEFAULT_TIMEOUT):
        self.reactor = reactor
        self.conn = conn
        self.client_getter = client_getter
        self.pool = pool
        self.tmpdir = tmpdir
        self.grid_wait = grid_wait
        self.stopping = False

    def _grid(self, progress):
        """The run's way to the grid: waits while the grid is away (``restore.gridwait``)."""
        def check():
            self._check_cancelled(progress)
            if self.stopping:
                raise Unavailable("stopping", "the daemon is stopping")

        return GridWait(self.reactor, self.client_getter, self.grid_wait, progress, check)

    async def _log_file(self, snapshot_id, grid):
        """A local path of the snapshot's log, downloading it if needed."""
        row = snapshots.with_log(self.conn, snapshot_id)
        if row is None:
            raise NotFound("unknown_snapshot", f"no snapshot {snapshot_id!r} to restore from")
        _, log_path, log_cap = row
        if log_path and os.path.exists(log_path):
            return log_path, False
        if not log_cap:
            raise NotFound("unknown_snapshot", f"the log of {snapshot_id} is not available")
        os.makedirs(self.tmpdir, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=self.tmpdir, suffix=".log")
        try:
            with os.fdopen(fd, "wb") as f:
                async def download(client):
                    f.seek(0)
                    f.truncate()
                    return await client.download_to(log_cap, f, max_size=MAX_LOG)

                await grid.call(download)
        except BaseException:
            os.unlink(path)
            raise
        return path, True

    def _check_cancelled(self, progress):
        if progress.cancelled:
            raise Cancelled()

    async def run(self, snapshot_id, paths, target, overwrite, progress, dry_run=False, verify=False):
        wanted = [os.fsencode(p) for p in (paths or [])]
        grid = self._grid(progress)
        log_path, temporary = await self._log_file(snapshot_id, grid)
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
            # The API refuses such paths when the log is here; a log read from
            # the grid is checked now: a typo is an error, never 0 files "done".
            for w in missing(entries, wanted):
                progress.errors.append({"path": os.fsdecode(w), "reason": "not in this snapshot"})
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
            unchanged = []
            if not overwrite:
                files, unchanged = await self._skip_restored(writer, files, progress)
            jobs = await self._restore_files(writer, files, progress, grid)
            if self.stopping:
                return
            self._check_cancelled(progress)
            await self._each(progress, [e for e in entries if e.kind not in (FILE, DIR, HARDLINK)],
                             lambda e: (writer.make_symlink if e.kind == SYMLINK else writer.make_special)(e))
            # Hard links last: what they link to is in place by now.
            links, refused = await deferToThreadPool(self.reactor, self.pool, hard_links, entries, wanted)
            for path, reason in refused:
                progress.errors.append({"path": os.fsdecode(path), "reason": reason})
            await self._each(progress, links, writer.make_hardlink)
            # Directory metadata last, deepest first, so writing into them
            # does not change their times again.
            await self._each(progress, dirs[::-1], writer.finish_dir)
            # Nothing is reported restored before it is on the disk.
            await deferToThreadPool(self.reactor, self.pool, writer.sync)
            if verify:
                await self._verify(writer, [j.entry for j in jobs if j.done] + unchanged, progress)
        finally:
            for path, reason in writer.warnings:
                progress.errors.append({"path": os.fsdecode(path), "reason": reason})
            progress.setid_dropped += writer.setid_dropped
            writer.close()

    async def _skip_restored(self, writer, files, progress):
        """
        The files the target does not already hold as the snapshot has them
        (a restore resumed after a restart, or run twice): those are counted
        done, checked by their content, and nothing is fetched for them;
        they are reported as ``unchanged``.  Returns (files to write, those).
        """
        keep, unchanged = [], []

        def check(entry):
            if (entry.inline is not None or entry.blobs) and writer.matches(entry):
                progress.files_done += 1
                progress.bytes_done += entry.size
                progress.unchanged += 1
                unchanged.append(entry)
            else:
                keep.append(entry)

        await self._each(progress, files, check)
        return keep, unchanged

    async def _plan_summary(self, entries, files, progress):
        jobs, spans, pending = await self._plan(files)
        for entry in pending:
            progress.pending.append(
                {"path": os.fsdecode(entry.path), "reason": "content not uploaded yet"})
        kinds: dict[str, int] = {}
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

    async def _verify(self, writer, entries, progress):
        """Read back ``entries`` (files written, and those found unchanged) and check their hash."""
        progress.files_verified = 0

        def verify(entry):
            try:
                writer.verify_file(entry)
                progress.files_verified += 1
            except VerifyFailed as e:
                raise OSError(f"verify: {e}")

        await self._each(progress, entries, verify)

    # Entries are handed to the worker thread in batches: one thread hop
    # per entry cost more than the work itself for small files.
    BATCH = 256

    async def _each(self, progress, items, fn, path_of=lambda e: e.path):
        """fn(item) for each item, in a worker thread, a batch at a time;
        an OSError or UnsafePath is that item's error, and the rest go on."""
        def batch(chunk):
            for item in chunk:
                if progress.cancelled or self.stopping:
                    return
                try:
                    fn(item)
                except (OSError, UnsafePath) as e:
                    progress.errors.append({"path": os.fsdecode(path_of(item)), "reason": str(e)})

        for start in range(0, len(items), self.BATCH):
            self._check_cancelled(progress)
            if self.stopping:
                return
            await deferToThreadPool(self.reactor, self.pool, batch, items[start:start + self.BATCH])

    def _plan(self, files):
        """
        restoreplan.plan in a worker thread, on a connection of its own:
        one index look-up per blob is seconds of work for a large restore,
        which must not stall the API.
        """
        db_path = dbmod.database_path(self.conn)
        return deferToThreadPool(self.reactor, self.pool, _plan_with_own_connection, db_path, files)

    async def _restore_files(self, writer, files, progress, grid):
        """Regular files: inline ones directly, the rest pack by pack."""
        jobs, spans, pending = await self._plan(files)
        for entry in pending:
            progress.pending.append(
                {"path": os.fsdecode(entry.path), "reason": "content not uploaded yet"})
        apply = SpanWriter(writer, progress)
        try:
            await self._each(progress, [j for j in jobs if j.remaining == 0 or j.direct],
                             apply.write_direct, path_of=lambda j: j.entry.path)
            sem = DeferredSemaphore(PARALLEL_SPANS)
            # Every span ends (or gives up) before the unfinished files are
            # aborted; then the first error, as itself, is the run's.
            results = await DeferredList(
                [sem.run(self._fetch_span, apply, span, progress, grid) for span in spans], consumeErrors=True)
            for ok, failure in results:
                if not ok:
                    failure.raiseException()
        finally:
            await deferToThreadPool(self.reactor, self.pool, apply.abort_unfinished, jobs)
        return jobs

    async def _fetch_span(self, apply, span, progress, grid):
        if self.stopping or progress.cancelled:
            return
        try:
            data = await grid.call(lambda client: client.download(span.cap, span.start, span.end - span.start))
        except TahoeError as e:
            apply.fail_span(span, f"cannot fetch content from the grid: {e}")
            return
        await deferToThreadPool(self.reactor, self.pool, apply.write_span, span, data)


def _plan_with_own_connection(db_path, files):
    with dbmod.worker_connection(db_path) as conn:
        return restoreplan.plan(files, lambda blob_hash: blobstate.locate(conn, blob_hash))
