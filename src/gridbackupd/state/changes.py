"""
The ``snapshot_figures`` and ``snapshot_changes`` tables: what changed in
each snapshot against the one before of its host (its ``parent`` here,
whatever the kind of its log), counted once and read by the API without
opening a log.

A snapshot has a figures row only with all its change rows: the scan
writes its rows in batches, then its figures last (``start`` first drops
what an earlier attempt left); ``replace`` writes both at once.  A
snapshot without a figures row past its scan is one no scan counted: the
daemon computes it in the background (``changes.compute``).  Forgetting a
snapshot drops its rows and the figures counted against it, which are
then computed again against the snapshot before.
"""

from gridbackupd.state import db as dbmod
from gridbackupd.state import snapshots

KEYS = ("files_added", "files_changed", "files_deleted",
        "entries_added", "entries_changed", "entries_deleted",
        "bytes_added", "bytes_deleted")
_COLUMNS = ", ".join(KEYS)

# Snapshots whose log is written: those that have (or are owed) figures.
SCANNED = ("uploading", "complete", "incomplete")


def start(conn, snapshot_id):
    """A scan starts counting: nothing of an earlier attempt of it is kept."""
    with dbmod.transaction(conn):
        _drop(conn, snapshot_id)


def _drop(conn, snapshot_id):
    conn.execute("DELETE FROM snapshot_figures WHERE snapshot = ?", (snapshot_id,))
    conn.execute("DELETE FROM snapshot_changes WHERE snapshot = ?", (snapshot_id,))


def _insert_rows(conn, snapshot_id, rows):
    conn.executemany(
        "INSERT OR REPLACE INTO snapshot_changes (snapshot, path, change, kind, size, mtime_ns) "
        "VALUES (?, ?, ?, ?, ?, ?)", [(snapshot_id, *row) for row in rows])


def add_rows(conn, snapshot_id, rows):
    """Rows ``(path, change, kind, size, mtime_ns)`` of a snapshot being counted."""
    with dbmod.transaction(conn):
        _insert_rows(conn, snapshot_id, rows)


def _insert_figures(conn, snapshot_id, parent, counts):
    conn.execute(
        f"INSERT OR REPLACE INTO snapshot_figures (snapshot, parent, {_COLUMNS}) "
        f"VALUES (?, ?, {', '.join('?' * len(KEYS))})",
        (snapshot_id, parent, *(counts[k] for k in KEYS)))


def finish(conn, snapshot_id, parent, counts, rows=()):
    """The scan's last rows and its figures, against ``parent`` (None: everything was added)."""
    with dbmod.transaction(conn):
        _insert_rows(conn, snapshot_id, rows)
        _insert_figures(conn, snapshot_id, parent, counts)


def replace(conn, snapshot_id, parent, counts, rows):
    """
    Figures and rows computed from the logs against ``parent``, stored only
    if the snapshot is still there and ``parent`` is still the snapshot
    before it (a forget may have run meanwhile); whether they were stored.
    """
    with dbmod.transaction(conn):
        row = conn.execute("SELECT host, state FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        if row is None or row[1] not in SCANNED:
            return False
        if snapshots.previous_logged(conn, snapshot_id, row[0]) != parent:
            return False
        _drop(conn, snapshot_id)
        _insert_rows(conn, snapshot_id, rows)
        _insert_figures(conn, snapshot_id, parent, counts)
        return True


def forget(conn, snapshot_id):
    """
    A forgotten snapshot's rows go, and so do the figures (and rows) of the
    snapshots counted against it: they are computed again (``missing``).
    """
    with dbmod.transaction(conn):
        owed = [r[0] for r in conn.execute(
            "SELECT snapshot FROM snapshot_figures WHERE parent = ?", (snapshot_id,))]
        for other in [snapshot_id, *owed]:
            _drop(conn, other)


def missing(conn):
    """
    The ids of the snapshots past their scan (with a log) that have no
    figures, oldest first: recovered ones, ones from before the figures
    were stored, ones whose snapshot before was forgotten.
    """
    marks = ",".join("?" * len(SCANNED))
    return [r[0] for r in conn.execute(
        f"SELECT id FROM snapshots s WHERE state IN ({marks}) AND log_path IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM snapshot_figures f WHERE f.snapshot = s.id) ORDER BY id",
        SCANNED)]


def _doc(row):
    doc = dict(zip(KEYS, row[2:]))
    doc["parent"] = row[1]
    return doc


def figures(conn, snapshot_id):
    """A snapshot's stored figures as a dict (KEYS and ``parent``), or None."""
    row = conn.execute(
        f"SELECT snapshot, parent, {_COLUMNS} FROM snapshot_figures WHERE snapshot = ?",
        (snapshot_id,)).fetchone()
    return _doc(row) if row is not None else None


def figures_of(conn, snapshot_ids):
    """{id: figures} of those of ``snapshot_ids`` that have them (one query)."""
    ids = list(snapshot_ids)
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    return {row[0]: _doc(row) for row in conn.execute(
        f"SELECT snapshot, parent, {_COLUMNS} FROM snapshot_figures WHERE snapshot IN ({marks})", ids)}


def history(conn, path, host=None):
    """
    Every change of ``path`` (raw bytes) in a published snapshot (complete
    or incomplete), oldest first: ``(snapshot, time, host, complete,
    change, kind, size, mtime_ns)``; only ``host``'s snapshots if given.
    """
    query = ("SELECT s.id, coalesce(s.started, s.requested), s.host, s.complete, "
             "c.change, c.kind, c.size, c.mtime_ns "
             "FROM snapshot_changes c JOIN snapshots s ON s.id = c.snapshot "
             "WHERE c.path = ? AND s.state IN ('complete', 'incomplete')")
    args: tuple = (path,)
    if host is not None:
        query += " AND s.host = ?"
        args += (host,)
    return conn.execute(query + " ORDER BY s.id", args).fetchall()


def uncounted(conn, host=None):
    """How many published snapshots (of ``host``, if given) have no figures yet: a history may miss their changes."""
    query = ("SELECT count(*) FROM snapshots s WHERE state IN ('complete', 'incomplete') "
             "AND NOT EXISTS (SELECT 1 FROM snapshot_figures f WHERE f.snapshot = s.id)")
    args: tuple = ()
    if host is not None:
        query += " AND host = ?"
        args = (host,)
    return conn.execute(query, args).fetchone()[0]
