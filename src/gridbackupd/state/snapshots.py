"""
The ``snapshots`` table: one row per backup, from request to published log.

A snapshot goes ``queued`` → ``scanning`` → ``uploading`` (its log is
written and its blobs are queued) → ``complete`` or ``incomplete`` (its log
is linked on the grid; incomplete when some of its files changed before
they could be read).  A scan that cannot run ends ``failed``; a scan
interrupted by a stop goes back to ``queued``.  Each move is one function
here, and each runs as one transaction (a savepoint of the caller's, if
there is one), so that a crash leaves a row in one state or the next.

``snapshot_blobs`` lists the blobs an ``uploading`` snapshot still waits
for; it is emptied once the snapshot's log is published.
"""

import json

from gridbackupd.state import db as dbmod

# -- from request to scan ------------------------------------------------------


def create_queued(conn, snapshot_id, host, paths, tags, requested):
    """A new request is ``queued``, with no start, no errors and no log."""
    with dbmod.transaction(conn):
        conn.execute(
            "INSERT INTO snapshots (id, state, host, paths, tags, requested) "
            "VALUES (?, 'queued', ?, ?, ?, ?)",
            (snapshot_id, host, json.dumps(list(paths)), json.dumps(list(tags)), requested),
        )


def next_queued(conn):
    """The id of the oldest ``queued`` snapshot (the next to scan), or None."""
    row = conn.execute("SELECT id FROM snapshots WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
    return row[0] if row is not None else None


def scanning_ids(conn):
    """The ids of the snapshots left ``scanning`` (by a process that died or stopped)."""
    return [r[0] for r in conn.execute("SELECT id FROM snapshots WHERE state = 'scanning'")]


def requeue(conn, snapshot_id, keep_blobs):
    """
    An interrupted scan goes back to ``queued`` with no start and no errors;
    its queued blobs stay listed only if a checkpoint (``keep_blobs``) covers them.
    """
    with dbmod.transaction(conn):
        if not keep_blobs:
            conn.execute("DELETE FROM snapshot_blobs WHERE snapshot = ?", (snapshot_id,))
        conn.execute(
            "UPDATE snapshots SET state = 'queued', started = NULL, errors = '[]' WHERE id = ?",
            (snapshot_id,),
        )


def mark_scanning(conn, snapshot_id, started):
    """A snapshot being scanned is ``scanning`` with the time its scan started."""
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE snapshots SET state = 'scanning', started = ? WHERE id = ?", (started, snapshot_id)
        )


def set_kind(conn, snapshot_id, kind, parent):
    """A snapshot has a parent only if its log is incremental."""
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE snapshots SET kind = ?, parent = ? WHERE id = ?",
            (kind, parent if kind == "incremental" else None, snapshot_id),
        )


def tags(conn, snapshot_id):
    """The tags a snapshot was requested with (an empty list if unreadable)."""
    row = conn.execute("SELECT tags FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
    try:
        return json.loads(row[0]) if row else []
    except ValueError:
        return []


def newest_scanned(conn, host):
    """``[(id, log path)]`` of ``host``'s newest snapshot with a written log (at most one)."""
    return conn.execute(
        "SELECT id, log_path FROM snapshots WHERE host = ? AND log_path IS NOT NULL "
        "AND state IN ('uploading', 'complete', 'incomplete') ORDER BY id DESC LIMIT 1",
        (host,),
    ).fetchall()


def mark_failed(conn, snapshot_id, finished, errors):
    """A scan that could not be done is ``failed``, finished, with the reasons in its errors."""
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE snapshots SET state = 'failed', finished = ?, errors = ? WHERE id = ?",
            (finished, json.dumps(errors), snapshot_id),
        )


def add_error(conn, snapshot_id, error):
    """Append one error to a snapshot's errors, the others kept."""
    with dbmod.transaction(conn):
        row = conn.execute("SELECT errors FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        errors = json.loads(row[0]) if row else []
        errors.append(error)
        conn.execute("UPDATE snapshots SET errors = ? WHERE id = ?", (json.dumps(errors), snapshot_id))


def mark_uploading(conn, snapshot_id, *, kind, parent, started, finished, files, bytes, errors, log_path):
    """A scanned snapshot is ``uploading`` only with its finished log's path and its counts."""
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE snapshots SET state = 'uploading', kind = ?, parent = ?, started = ?, "
            "finished = ?, files = ?, bytes = ?, errors = ?, log_path = ? WHERE id = ?",
            (kind, parent if kind == "incremental" else None, started, finished,
             files, bytes, json.dumps(errors), log_path, snapshot_id),
        )


# -- from upload to published log ----------------------------------------------


def ready_to_publish(conn):
    """
    ``[(id, log path)]`` of the ``uploading`` snapshots whose blobs are all
    committed or stale, and whose parent (if any) has its log on the grid.
    """
    return conn.execute(
        "SELECT s.id, s.log_path FROM snapshots s WHERE s.state = 'uploading' AND NOT EXISTS ("
        "  SELECT 1 FROM snapshot_blobs sb JOIN blobs b ON b.hash = sb.hash "
        "  WHERE sb.snapshot = s.id AND b.state IN ('pending', 'uploaded')"
        # An incremental log is only worth linking once its parent's is:
        # a new machine reads the chain from the grid.
        ") AND (s.parent IS NULL OR EXISTS ("
        "  SELECT 1 FROM snapshots p WHERE p.id = s.parent AND p.log_cap IS NOT NULL"
        ")) ORDER BY s.id"
    ).fetchall()


def stale_blob_count(conn, snapshot_id):
    """How many of a snapshot's blobs changed on disk before they could be uploaded."""
    return conn.execute(
        "SELECT count(*) FROM snapshot_blobs sb JOIN blobs b ON b.hash = sb.hash "
        "WHERE sb.snapshot = ? AND b.state = 'stale'",
        (snapshot_id,),
    ).fetchone()[0]


def mark_complete(conn, snapshot_id, log_cap, complete):
    """
    A published snapshot is ``complete`` (or ``incomplete``, if not
    ``complete``) only with its log's cap, and no longer lists blobs.
    """
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE snapshots SET state = ?, log_cap = ?, complete = ? WHERE id = ?",
            ("complete" if complete else "incomplete", log_cap, int(bool(complete)), snapshot_id),
        )
        # What is committed no longer needs tracking per snapshot.
        conn.execute("DELETE FROM snapshot_blobs WHERE snapshot = ?", (snapshot_id,))
