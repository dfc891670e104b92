"""
The ``packs`` table: the pack files on the grid and the commit each is in.

A pack row is written only once the grid answered its upload with a cap
(``record``), together with its blobs' places; it gets a ``commit_name``
when a commit directory that lists it is recorded (``commits.record``).
"""

from gridbackupd.state import blobs as blobsmod
from gridbackupd.state import db as dbmod


def record(conn, name, cap, size, placed):
    """
    An uploaded pack has a row with its cap, and its ``pending`` blobs
    (``placed``: ``(hash, offset, length, compression)``) become ``uploaded``
    in it, in one transaction.  Returns the pack's row id.
    """
    with dbmod.transaction(conn):
        row = conn.execute("SELECT id FROM packs WHERE name = ?", (name,)).fetchone()
        if row is None:
            pack_id = conn.execute(
                "INSERT INTO packs (name, cap, size) VALUES (?, ?, ?)", (name, cap, size)
            ).lastrowid
        else:
            pack_id = row[0]
        blobsmod.mark_uploaded(conn, pack_id, placed)
    return pack_id


def uncommitted(conn):
    """``[(id, name, cap)]`` of the uploaded packs that no commit lists yet, by name."""
    return conn.execute(
        "SELECT id, name, cap FROM packs WHERE commit_name IS NULL AND cap IS NOT NULL ORDER BY name"
    ).fetchall()


def anything_uncommitted(conn):
    """Whether an uploaded pack or inlined blob waits for a commit."""
    return conn.execute(
        "SELECT 1 FROM packs WHERE commit_name IS NULL AND cap IS NOT NULL "
        "UNION ALL SELECT 1 FROM blobs WHERE state = 'uploaded' AND inline_data IS NOT NULL "
        "AND commit_name IS NULL LIMIT 1"
    ).fetchone() is not None
