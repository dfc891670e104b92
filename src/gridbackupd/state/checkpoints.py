"""
Scan checkpoints: where a scan killed half-way resumes (see scan/checkpoints.py).

One JSON document per snapshot in ``meta``; it is written in the same
transaction as the blobs queued up to it, so the two always agree.
"""

import json

from gridbackupd.state import db as dbmod

KEY = "scan_checkpoint:"


def load(conn, snapshot_id):
    """The checkpoint of a snapshot's scan, or None."""
    text = dbmod.get_meta(conn, KEY + snapshot_id)
    return json.loads(text) if text else None


def save(conn, snapshot_id, state):
    """
    Store a snapshot's checkpoint, replacing the last; the caller's
    transaction holds it together with the blobs queued up to it.
    """
    with dbmod.transaction(conn):
        dbmod.set_meta(conn, KEY + snapshot_id, json.dumps(state))


def drop(conn, snapshot_id):
    """A snapshot's scan has no checkpoint (none already is fine)."""
    with dbmod.transaction(conn):
        dbmod.delete_meta(conn, KEY + snapshot_id)


def of_interrupted_scans(conn):
    """
    ``[(snapshot id, checkpoint)]`` of the scans that may still resume from
    a checkpoint: their snapshot is ``queued`` (a stopped or killed scan is
    requeued) or ``scanning``.  A failed snapshot's leftover checkpoint is
    never resumed, so it is not listed.
    """
    rows = conn.execute(
        "SELECT s.id, m.value FROM snapshots s JOIN meta m ON m.key = ? || s.id "
        "WHERE s.state IN ('queued', 'scanning') ORDER BY s.id", (KEY,)).fetchall()
    return [(snapshot_id, json.loads(value)) for snapshot_id, value in rows]
