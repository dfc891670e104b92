"""
The daemon's side of the mount: the per-directory index of every finished
snapshot, built in a worker thread when a snapshot completes, when the
daemon is ready (after a recovery too), and dropped when it is forgotten.

Reading a snapshot's chain of logs costs about 20 s per million files; the
mount must list one directory in milliseconds, so the chain is read once
here, in the background, into ``state.mountindex``.  A snapshot is indexed
once its state is final (``complete`` or ``incomplete``); files of an
incomplete snapshot whose content is not on the grid are marked pending.
"""

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from gridbackupd import crashpoints
from gridbackupd.format import chain
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.logreader import LogReader, read_header
from gridbackupd.model import DIR, HARDLINK, Deletion
from gridbackupd.mount import listing
from gridbackupd.state import blobs, mountindex, snapshots
from gridbackupd.state import db as dbmod

FINAL = ("complete", "incomplete")

log = Logger()


class Stopped(Exception):
    """The daemon stops: the index being built is dropped (rolled back)."""


def index_snapshot(index_conn, db_path, snapshot_id, log_paths, host, time, complete, stopping=lambda: False):
    """
    Index one snapshot from its chain of logs ``[(id, path), ...]``, in one
    transaction (worker thread).  ``db_path``: the state database, read for
    the blobs of an incomplete snapshot.  Returns the number of entries.
    """
    known = dict(log_paths)
    top = log_paths[-1][1]
    state_conn = None if complete else dbmod.read_only_connection(db_path)

    def pending(entry):
        return any(blobs.locate(state_conn, h) is None for h, _ in entry.blobs)

    def entries(records):
        for n, entry in enumerate(records):
            if n % 4096 == 0 and stopping():
                raise Stopped()
            yield entry

    try:
        with mountindex.writing_snapshot(index_conn, snapshot_id) as w, \
                chain.open_chain(top, known.get, verify=False) as (_, records):
            count = listing.build(entries(records), w, int(time * 1e9), None if complete else pending)
            w.finish(host, time, complete, count)
    finally:
        if state_conn is not None:
            state_conn.close()
    return count


# An increment with more records than this is indexed by reading its chain:
# its changes are held in memory, grouped by directory.
MAX_APPLIED = 50_000


class _ReadTheChain(Exception):
    """The increment cannot be applied to its parent's index (links, roots, size): read the chain."""


def _increment(log_path, parent_id):
    """(roots, records) of the log if it is an increment on ``parent_id`` of at most MAX_APPLIED records."""
    with open(log_path, "rb") as f:
        reader = LogReader(f, verify=False)
        header = reader.header
        if header.kind != "incremental" or header.parent != parent_id:
            raise _ReadTheChain()
        records: list = []
        for record in reader:
            if len(records) >= MAX_APPLIED:
                raise _ReadTheChain()
            records.append(record)
    return header.paths, records


def index_from_parent(index_conn, snapshot_id, log_paths, host, time, complete):
    """
    Index a complete snapshot whose own log is an increment on an indexed,
    complete parent by copying the parent's rows and applying the
    increment's records, in one transaction: only the directories it
    changes are listed again (an unchanged rescan changes none), and the
    directories above the backed-up paths, whose rows carry the
    snapshot's time.  Returns the number of entries, or None when this
    does not apply (the caller reads the chain): an incomplete snapshot
    (pending files), other backed-up paths than the parent's, a hard link
    among the changes (their counts), more than MAX_APPLIED records.
    """
    if not complete or len(log_paths) < 2:
        return None
    parent_id = log_paths[-2][0]
    parent = mountindex.indexed(index_conn, parent_id)
    if parent is None or not parent[1]:
        return None
    try:
        roots, records = _increment(log_paths[-1][1], parent_id)
        if roots != read_header(log_paths[-2][1]).paths:
            return None
        parent_ns, now_ns = int(parent[0] * 1e9), int(time * 1e9)
        with mountindex.writing_snapshot(index_conn, snapshot_id) as w:
            mountindex.copy_rows(index_conn, parent_id, snapshot_id)
            count = parent[2] + _apply(index_conn, snapshot_id, records)
            for path in sorted(listing.virtual_parents(roots)):
                data = mountindex.listing(index_conn, snapshot_id, path)
                if data is None:
                    continue
                rows = [listing.virtual_row(r[listing.NAME], now_ns)
                        if r == listing.virtual_row(r[listing.NAME], parent_ns) else r
                        for r in listing.decode(data)]
                mountindex.put_directory(index_conn, snapshot_id, path, *listing.encode(rows))
            w.finish(host, time, complete, count)
    except _ReadTheChain:
        return None
    return count


def _apply(conn, snapshot_id, records):
    """The increment's records on the copied rows; how many entries more (or fewer) the snapshot has."""
    changes: dict[bytes, dict[bytes, object]] = {}  # directory -> {name: row, or None: gone}
    made = set()  # directories that are new (or were something else)
    gone = set()  # paths deleted, or no longer directories: no listing of theirs to change
    more = 0
    for record in records:
        path = record.path
        parent, name = listing.parent_and_name(path)
        if mountindex.links(conn, snapshot_id, parent).get(name) is not None:
            raise _ReadTheChain()  # a hard-linked entry: its counts change
        if type(record) is Deletion:
            changes.setdefault(parent, {})[name] = None
            mountindex.drop_directory(conn, snapshot_id, path)
            gone.add(path)
            more -= 1
            continue
        if record.kind == HARDLINK:
            raise _ReadTheChain()
        changes.setdefault(parent, {})[name] = listing.row_of(record, name)
        if record.kind == DIR:
            if not mountindex.is_directory(conn, snapshot_id, path):
                made.add(path)
                changes.setdefault(path, {})
        else:
            mountindex.drop_directory(conn, snapshot_id, path)
            gone.add(path)
    for directory in sorted(changes):
        if directory in gone:
            continue
        data = None if directory in made else mountindex.listing(conn, snapshot_id, directory)
        if data is None and directory not in made:
            raise _ReadTheChain()  # a change in a directory the parent's index does not have
        rows = {} if data is None else {r[listing.NAME]: r for r in listing.decode(data)}
        for name, row in changes[directory].items():
            if row is None:
                rows.pop(name, None)
            else:
                more += name not in rows
                rows[name] = row
        mountindex.put_directory(conn, snapshot_id, directory,
                                 *listing.encode([rows[n] for n in sorted(rows)]))
    return more


class MountIndexer:
    """
    Keeps the mount index in step with the finished snapshots: ``kick()``
    (at start, and whenever a snapshot ends) runs one catch-up in a worker
    thread, or another one right after the one that runs.
    """

    def __init__(self, reactor, conn, pool, statedir):
        self.reactor = reactor
        self.conn = conn
        self.pool = pool
        self.statedir = statedir
        self._running: Deferred | None = None
        self._again = False
        self._stopping = False
        self._idle: list[Deferred] = []

    def idle(self):
        """Fires once no catch-up runs or is due (for tests and benchmarks)."""
        d: Deferred = Deferred()
        if self._running is None:
            d.callback(None)
        else:
            self._idle.append(d)
        return d

    def kick(self, *_):
        if self._stopping:
            return
        if self._running is not None:
            self._again = True
            return
        self._running = Deferred.fromCoroutine(self._catch_up())
        self._running.addErrback(lambda f: log.failure("the mount index could not be brought up to date", f))
        self._running.addBoth(self._done)

    def _done(self, _):
        self._running = None
        if self._again and not self._stopping:
            self._again = False
            self.kick()
            return
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    def start(self):
        self.kick()

    def stop(self):
        """Stop at the next few thousand entries; fires when the worker has let go."""
        self._stopping = True
        running = self._running
        if running is None:
            return None
        return self.idle()

    def _wanted(self):
        """{id: (host, time, complete, log chain)} of the finished snapshots with local logs (reactor thread)."""
        wanted = {}
        resolve = snapshots.log_resolver(self.conn)
        for snapshot_id, state, host, time, _ in snapshots.lineage(self.conn):
            if state not in FINAL:
                continue
            top = resolve(snapshot_id)
            if top is None:
                continue
            try:
                paths = chain.chain_paths(top, resolve)
            except (LogFormatError, OSError) as e:
                log.warn("snapshot {id} cannot be indexed for mounting: {why}", id=snapshot_id, why=e)
                continue
            wanted[snapshot_id] = (host, time, state == "complete", paths)
        return wanted

    async def _catch_up(self):
        wanted = self._wanted()
        await deferToThreadPool(self.reactor, self.pool, self._catch_up_in_thread, wanted)

    def _catch_up_in_thread(self, wanted):
        conn = mountindex.open_index(self.statedir.mount_index)
        try:
            have = mountindex.indexed_ids(conn)
            mountindex.drop_snapshots(conn, sorted(have - set(wanted)))
            for snapshot_id in sorted(set(wanted) - have):
                if self._stopping:
                    return
                host, time, complete, paths = wanted[snapshot_id]
                try:
                    count = index_from_parent(conn, snapshot_id, paths, host, time, complete)
                    if count is None:
                        count = index_snapshot(conn, self.statedir.database, snapshot_id, paths, host,
                                               time, complete, lambda: self._stopping)
                except Stopped:
                    return
                except (LogFormatError, OSError) as e:
                    log.warn("snapshot {id} cannot be indexed for mounting: {why}", id=snapshot_id, why=e)
                    continue
                crashpoints.reached("mount.index_written")
                log.info("snapshot {id} indexed for mounting ({n} entries)", id=snapshot_id, n=count)
        finally:
            conn.close()
