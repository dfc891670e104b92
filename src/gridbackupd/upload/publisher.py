"""
The one writer of the backup set's mutable directories.

Publish order is what keeps the grid consistent after a crash at any
moment: packs first (the uploader), then a commit (an immutable directory
of those packs plus the index segment that describes them and the inline
blobs read since the last commit), then its link in ``commits/``, and only
then the logs of the snapshots whose content is all committed.  Every step
is idempotent: a commit of the same packs is the same immutable directory,
and linking a name again to the same cap is a no-op, so a restart simply
does the unfinished steps again.

Only one daemon writes a backup set: before any mutable write the publisher
holds the writer lock (``writerlock``), and renews it on a timer as well
(``heartbeat``), so that an idle daemon does not lose it.
"""

import contextlib

import attr
from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from gridbackupd import clock as clockmod
from gridbackupd import crashpoints
from gridbackupd.errors import GridBackupError, TahoeNotFound
from gridbackupd.format.index import (
    MAX_SETTINGS,
    SETTINGS_VERSION,
    commit_name,
    encode_index_segment,
    encode_settings,
    parse_settings,
    settings_document,
)
from gridbackupd.grid.layout import (
    COMMIT_DAYS,
    COMMITS,
    INDEX,
    LOCK,
    SETTINGS,
    SNAPSHOT_DAYS,
    SNAPSHOTS,
    read_index,
)
from gridbackupd.model import short_cap
from gridbackupd.state import blobs as blobsmod
from gridbackupd.state import commits, snapshots
from gridbackupd.state import db as dbmod
from gridbackupd.state import packs as packsmod
from gridbackupd.upload import convert as convertmod
from gridbackupd.upload.buckets import DAY, Buckets, bucket_name
from gridbackupd.upload.writerlock import Heartbeat, WriterLock, WriterLockHeld
from gridbackupd.waiters import Waiters

__all__ = ["Publisher", "settings_document", "WriterLockHeld"]


@attr.define
class Layout:
    """
    Where a set's logs and commits are linked: version 1's two flat
    directories, or version 2's two indexes of day buckets.
    """

    root: str = attr.field(repr=False)
    snapshots: str = attr.field(repr=False)  # v1: snapshots/; v2: snapshot-days/
    commits: str = attr.field(repr=False)  # v1: commits/; v2: commit-days/
    version: int = 1
    log_buckets: Buckets | None = attr.field(default=None, repr=False)
    commit_buckets: Buckets | None = attr.field(default=None, repr=False)

    async def linked_logs(self, client):
        """Every linked snapshot log, by snapshot id (either version)."""
        if self.version >= 2:
            return await read_index(client, self.snapshots)
        return await client.list_dir(self.snapshots)

    async def linked_commits(self, client):
        """Every linked commit, by name (either version)."""
        if self.version >= 2:
            return await read_index(client, self.commits)
        return await client.list_dir(self.commits)

    def forget_buckets(self):
        """Drop what the buckets remember (the open bucket, sealed names): read them again."""
        for buckets in (self.log_buckets, self.commit_buckets):
            if buckets is not None:
                buckets.forget()

    async def link_commits(self, client, children):
        if self.commit_buckets is not None:
            await self.commit_buckets.link(children)
        else:
            await client.set_children(self.commits, children)

    async def unlink_commits(self, client, names):
        """Unlink commits wherever they are (gone already is fine)."""
        if self.commit_buckets is not None:
            await self.commit_buckets.change(dict.fromkeys(names))
            return
        for name in names:
            try:
                await client.unlink(self.commits, name)
            except TahoeNotFound:
                pass  # gone already: an earlier run unlinked it before it could say so

    async def link_log(self, client, snapshot_id, cap):
        """Link a new snapshot's log."""
        if self.log_buckets is not None:
            await self.log_buckets.link({snapshot_id: cap})
        else:
            await client.set_children(self.snapshots, {snapshot_id: cap})

    async def replace_log(self, client, snapshot_id, cap):
        """Link ``cap`` in place of a snapshot's log, wherever it is (None: unlink it)."""
        if self.log_buckets is not None:
            await self.log_buckets.change({snapshot_id: cap})
        elif cap is not None:
            await client.set_children(self.snapshots, {snapshot_id: cap})
        else:
            try:
                await client.unlink(self.snapshots, snapshot_id)
            except TahoeNotFound:
                pass


@attr.frozen
class Recovered:
    """What one recovery pass finished: false when it found nothing to do."""

    linked: int = 0  # commits linked
    unlinked: int = 0  # commits a prune retired, unlinked
    settled: int = 0  # blobs of linked commits marked committed
    committed: str | None = None  # the name of the commit made
    published: list = attr.field(factory=list)  # snapshot ids

    def __bool__(self):
        return bool(self.linked or self.unlinked or self.settled or self.committed or self.published)


class Publisher:
    log = Logger()

    def __init__(self, conn, client, settings, waiters=None, writer_id=None, host="localhost",
                 now=clockmod.wall, monotonic=clockmod.monotonic, layout_version=SETTINGS_VERSION,
                 bucket_period=DAY):
        self.conn = conn
        self.client = client
        # The layout version this publisher writes (1 only for tests and
        # benchmarks that need a set as older code made it).
        self.layout_version = layout_version
        self.settings = {**settings, "version": layout_version}
        self.now = now
        self.bucket_period = bucket_period
        self.waiters = waiters if waiters is not None else Waiters()
        self.writer_id = writer_id or _writer_id(conn)
        self.host = host
        self.layout: Layout | None = None
        self.lock = DeferredLock()  # one mutable write at a time, lock renewals included
        self.writer = WriterLock(client, self.writer_id, host, wallclock=now, monotonic=monotonic)

    @property
    def lock_error(self):
        """Why this daemon does not write the backup set now, or None."""
        return self.writer.error

    async def ensure_layout(self, rootcap):
        """
        Find (or create the missing parts of) the directories under the
        root; convert a version 1 set to version 2 (under the writer lock).
        A set of a version this publisher does not write is refused
        (UnknownLayoutVersion, from ``parse_settings``).
        """
        children = await self.client.list_dir(rootcap)
        settings = None
        if SETTINGS in children:
            settings = parse_settings(
                await self.client.download(children[SETTINGS].cap, max_size=MAX_SETTINGS),
                known=tuple(range(1, self.layout_version + 1)))
            version = settings["version"]
        elif SNAPSHOTS in children or COMMITS in children:
            version = 1  # a v1 set whose settings went missing: v1 wrote them with its directories
        else:
            version = self.layout_version
        if self.layout_version >= 2 and settings is not None and convertmod.needs_conversion(children):
            if await self._convert(rootcap, settings):
                children = await self.client.list_dir(rootcap)
                version = 2
        names = (SNAPSHOT_DAYS, COMMIT_DAYS) if version >= 2 else (SNAPSHOTS, COMMITS)
        caps = {}
        missing = {}
        for name in names:
            child = children.get(name)
            if child is not None and child.rw_uri:
                caps[name] = child.rw_uri
            else:
                caps[name] = missing[name] = await self.client.mkdir()
        if SETTINGS not in children:
            missing[SETTINGS] = await self.client.upload_bytes(
                encode_settings({**self.settings, "version": version}))
        self.layout = Layout(rootcap, caps[names[0]], caps[names[1]], version)
        if version >= 2:
            self.layout.log_buckets = Buckets(self.client, caps[names[0]], self.now, self.bucket_period)
            self.layout.commit_buckets = Buckets(self.client, caps[names[1]], self.now, self.bucket_period)
        if missing:
            await self.lock.acquire()
            try:
                await self.writer.take(self.layout.root, children, extra=missing)
            finally:
                self.lock.release()
        return self.layout

    async def _convert(self, rootcap, settings):
        """
        Convert a version 1 set (or finish converting one) under the writer
        lock; False if another daemon holds it (this one writes nothing
        then, and the conversion waits for a start that holds the lock).
        """
        await self.lock.acquire()
        try:
            try:
                await self.writer.hold(rootcap)
            except WriterLockHeld as e:
                self.log.warn("not converting the backup set to layout version 2 now: {e}", e=e)
                return False
            self.log.info("converting the backup set to on-grid layout version 2")
            await convertmod.convert(
                self.client, rootcap, settings,
                bucket_name(self.now() - self.bucket_period, self.bucket_period),
                lambda: self.writer.hold(rootcap))
            return True
        finally:
            self.lock.release()

    def _layout(self):
        """The directories found by ``ensure_layout``, which every write needs first."""
        if self.layout is None:
            raise GridBackupError("the backup set's layout is not known yet (ensure_layout first)")
        return self.layout

    # -- the writer lock ---------------------------------------------------------

    async def take_over(self):
        """
        Take the writer lock now, however fresh another daemon's is: for a
        person who knows the other machine is gone (a new machine after a
        disaster).  The other daemon, if it still runs, sees our lock and
        stops writing.  Returns the host whose lock was taken, or None.
        """
        await self.lock.acquire()
        try:
            root = self._layout().root
            children = await self.client.list_dir(root)
            current = children.get(LOCK)
            other = await self.writer.read(current.cap) if current is not None else None
            await self.writer.take(root, children, force=True)
            self._layout().forget_buckets()
        finally:
            self.lock.release()
        if other is None or other["writer"] == self.writer_id:
            return None
        self.log.warn("took over the writer lock of host {host} on request", host=other["host"])
        return other["host"]

    async def hold_lock(self):
        """
        Make sure this daemon holds the writer lock (call with ``self.lock``
        held).  Taken anew (not renewed), what this daemon remembered of the
        buckets may be stale: another daemon may have written meanwhile.
        """
        fresh = self.writer.renewed is None
        await self.writer.hold(self._layout().root)
        if fresh:
            self._layout().forget_buckets()

    async def renew_lock(self):
        """The heartbeat: renew the writer lock we hold when due, even with nothing to write."""
        if not self.writer.due():
            return
        await self.lock.acquire()
        try:
            if self.writer.due():
                await self.writer.take(self._layout().root)
        finally:
            self.lock.release()

    def heartbeat(self, clock):
        """The service that renews the lock on ``clock`` (a child of the daemon)."""
        return Heartbeat(clock, self.renew_lock)

    @contextlib.asynccontextmanager
    async def writing(self):
        """
        ``async with publisher.writing():`` the one way to write the backup
        set's mutable directories: one write at a time in this daemon, and
        under a fresh writer lock (WriterLockHeld if another daemon has it).
        """
        await self.lock.acquire()
        try:
            await self.hold_lock()
            yield
        finally:
            self.lock.release()

    async def check_writer(self):
        """For the uploader: raise WriterLockHeld unless this daemon may write."""
        async with self.writing():
            pass  # taking the lock renews it when due, or says why not

    # -- commits -----------------------------------------------------------------

    async def commit(self):
        """Publish every uploaded pack and inline blob that is not yet in a linked commit."""
        async with self.writing():
            await self._link_unlinked_commits()
            packs = packsmod.uncommitted(self.conn)
            inline = blobsmod.uncommitted_inline(self.conn)
            if not packs and not inline:
                return None
            ids = [p[0] for p in packs]
            rows = blobsmod.placed_in_packs(self.conn, ids)
            segment = encode_index_segment(rows, inline)
            name = commit_name(segment)
            index_cap = await self.client.upload_bytes(segment)
            crashpoints.reached("publisher.index_uploaded")
            children = {p[1]: p[2] for p in packs}
            children[INDEX] = index_cap
            cap = await self.client.mkdir_immutable(children)
            crashpoints.reached("publisher.commit_made")
            commits.record(self.conn, name, cap, ids, [h for h, _ in inline])
            crashpoints.reached("publisher.commit_recorded")
            await self._link_unlinked_commits()
            self.log.info("committed {packs} packs and {inline} inline blobs as {name}",
                          packs=len(packs), inline=len(inline), name=name)
            return name

    async def _link_unlinked_commits(self):
        """Link the recorded commits not yet in ``commits/``, then unlink retired ones; how many were linked."""
        rows = commits.unlinked(self.conn)
        if rows:
            await self._layout().link_commits(self.client, dict(rows))
            crashpoints.reached("publisher.commit_linked")
            commits.mark_linked(self.conn, [name for name, _ in rows])
            crashpoints.reached("publisher.blobs_committed")
        await self._unlink_retired_commits()
        return len(rows)

    async def _unlink_retired_commits(self):
        """
        Unlink the commits a prune replaced (``linked = -1``).  Only ever
        after the commits that replace them are linked (the caller's order),
        so every blob a kept snapshot needs stays in a linked commit.
        """
        names = commits.retired(self.conn)
        if names:
            crashpoints.reached("prune.commits_linked")
            await self._layout().unlink_commits(self.client, names)
        for name in names:
            commits.drop_retired(self.conn, name)
            crashpoints.reached("prune.retired_unlinked")
        if names:
            self.log.info("unlinked {n} commits replaced by a prune", n=len(names))

    async def recover(self, at_start=False):
        """
        The recovery pass, at start and after every upload round: finish
        every durable step a crash (or anything else) left half-done, from
        the database alone, so that none waits for new work to come along.
        Links the commits recorded but not linked (and marks their blobs
        committed), unlinks the commits a prune retired, marks committed the
        blobs that sit in an already linked commit but are not marked,
        commits the uploaded packs and inline blobs no commit holds yet, and
        publishes every snapshot whose blobs are all committed.
        """
        async with self.writing():
            retired = len(commits.retired(self.conn))
            linked = await self._link_unlinked_commits()
            settled = commits.settle_linked(self.conn)
        if settled:
            self.log.info("{n} blobs of linked commits were not marked committed; now they are", n=settled)
        if at_start:
            crashpoints.reached("start.recovery_halfway")
        committed = await self.commit() if packsmod.anything_uncommitted(self.conn) else None
        published = await self.publish_snapshots()
        return Recovered(linked, retired, settled, committed, published)

    async def replace_commits(self):
        """Link the commits a prune wrote and unlink those they replace."""
        async with self.writing():
            await self._link_unlinked_commits()

    # -- snapshot logs -------------------------------------------------------------

    async def link_snapshot_log(self, snapshot_id, cap):
        """Link the log of a snapshot in place of the one linked (in ``snapshots/`` or its bucket)."""
        async with self.writing():
            await self._layout().replace_log(self.client, snapshot_id, cap)

    async def unlink_snapshot_log(self, snapshot_id):
        """Remove a forgotten snapshot's log from ``snapshots/`` or its bucket (gone already is fine)."""
        async with self.writing():
            await self._layout().replace_log(self.client, snapshot_id, None)

    async def publish_snapshots(self):
        """Upload and link the logs of snapshots that have nothing left to upload."""
        ready = snapshots.ready_to_publish(self.conn)
        for snapshot_id, log_path in ready:
            async with self.writing():
                cap = await self.client.upload_file(log_path)
                crashpoints.reached("publisher.log_uploaded")
                await self._layout().link_log(self.client, snapshot_id, cap)
                crashpoints.reached("publisher.log_linked")
                stale = snapshots.stale_blob_count(self.conn, snapshot_id)
                snapshots.mark_complete(self.conn, snapshot_id, cap, complete=not stale)
                crashpoints.reached("publisher.snapshot_complete")
                self.log.info(
                    "published snapshot {id} (log {cap})", id=snapshot_id, cap=short_cap(cap)
                )
            self.waiters.fire(snapshot_id, "complete" if not stale else "incomplete")
        return [r[0] for r in ready]


def _writer_id(conn):
    """This state directory's writer id: a restart of the same daemon keeps its lock."""
    import secrets

    value = dbmod.get_meta(conn, "writer_id")
    if value is None:
        value = "w-" + secrets.token_hex(8)
        with dbmod.transaction(conn):
            dbmod.set_meta(conn, "writer_id", value)
    return value
