"""
Figures and change rows computed from the logs, for the snapshots no scan
counted: recovered from the grid, made before the figures were stored,
scanned after a resume (the part before the checkpoint was not counted),
or whose snapshot before was forgotten.  It streams the snapshot's chain
of logs against its parent's (about 4 s for 100,000 entries each), once
per snapshot, in a worker thread with its own database connection.
"""

import contextlib

from twisted.logger import Logger

from gridbackupd import crashpoints
from gridbackupd.changes.tally import Tally, stream
from gridbackupd.format import chain
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.state import changes, snapshots
from gridbackupd.state import db as dbmod

log = Logger()


@contextlib.contextmanager
def _entries(log_paths):
    (_, top), known = log_paths[-1], dict(log_paths)
    with chain.open_chain(top, known.get) as (_, records):
        yield records


def compare(parent_logs, logs):
    """A ``Tally`` of the snapshot whose chain is ``logs`` against ``parent_logs`` (empty: none)."""
    tally = Tally()
    with contextlib.ExitStack() as stack:
        before = stack.enter_context(_entries(parent_logs)) if parent_logs else iter(())
        after = stack.enter_context(_entries(logs))
        for change, old, new in stream(before, after):
            tally.add(change, old, new)
    return tally


def _chain(conn, snapshot_id):
    row = snapshots.log_link(conn, snapshot_id)
    if row is None or row[2] is None:
        raise chain.ChainError(f"snapshot {snapshot_id} has no log here")
    return chain.chain_paths(row[2], snapshots.log_resolver(conn))


def fill(conn, snapshot_id):
    """Compute and store one snapshot's figures (worker thread); whether they were stored."""
    host = snapshots.hosts(conn).get(snapshot_id)
    if host is None:
        return False
    parent = snapshots.previous_logged(conn, snapshot_id, host)
    try:
        logs = _chain(conn, snapshot_id)
        parent_logs = _chain(conn, parent) if parent is not None else []
        tally = compare(parent_logs, logs)
    except (OSError, LogFormatError) as e:
        log.warn("the figures of {id} cannot be computed: {error}", id=snapshot_id, error=e)
        return False
    stored = changes.replace(conn, snapshot_id, parent, tally.counts, tally.rows)
    if stored:
        crashpoints.reached("figures.computed")
    return stored


def fill_missing(db_path, skip=(), stopping=lambda: False):
    """
    Compute the figures of every snapshot that has none, oldest first
    (worker thread), until ``stopping()``; the ids that could not be
    computed (their logs are not here or unreadable).
    """
    failed: list[str] = []
    conn = dbmod.connect_writer(db_path)
    try:
        while True:
            todo = [i for i in changes.missing(conn) if i not in skip and i not in failed]
            if not todo:
                return failed
            for snapshot_id in todo:
                if stopping():
                    return failed
                if not fill(conn, snapshot_id):
                    failed.append(snapshot_id)
    finally:
        conn.close()
