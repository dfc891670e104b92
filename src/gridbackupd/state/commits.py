"""
The ``commits`` table: the immutable commit directories and their links.

A commit is recorded (``linked = 0``) once its directory exists on the
grid, then marked linked (``linked = 1``) once it is a child of
``commits/`` in the root, which is when its blobs become ``committed``.
A prune marks the commits it replaced ``linked = -1``; those rows go once
they are unlinked on the grid.  Each move is one transaction.
"""

from gridbackupd.state import blobs as blobsmod
from gridbackupd.state import db as dbmod


def record(conn, name, cap, pack_ids, inline_hashes):
    """
    A commit made on the grid has an unlinked row (``linked = 0``), and its
    packs and inline blobs name it, in one transaction.
    """
    pack_ids = list(pack_ids)
    with dbmod.transaction(conn):
        conn.execute("INSERT OR REPLACE INTO commits (name, cap, linked) VALUES (?, ?, 0)", (name, cap))
        if pack_ids:
            conn.execute(
                f"UPDATE packs SET commit_name = ? WHERE id IN ({','.join('?' * len(pack_ids))})",
                [name, *pack_ids],
            )
        conn.executemany("UPDATE blobs SET commit_name = ? WHERE hash = ?", [(name, h) for h in inline_hashes])


def unlinked(conn):
    """``[(name, cap)]`` of the commits recorded but not yet linked in ``commits/``."""
    return conn.execute("SELECT name, cap FROM commits WHERE linked = 0").fetchall()


def mark_linked(conn, names):
    """A commit is ``linked = 1`` only together with its blobs being ``committed``."""
    with dbmod.transaction(conn):
        for name in names:
            conn.execute("UPDATE commits SET linked = 1 WHERE name = ?", (name,))
            blobsmod.mark_committed(conn, name)


def retired(conn):
    """The names of the commits a prune replaced (``linked = -1``), still linked on the grid."""
    return [r[0] for r in conn.execute("SELECT name FROM commits WHERE linked = -1")]


def drop_retired(conn, name):
    """A retired commit's row goes once it is unlinked from the grid; a live one is never dropped."""
    with dbmod.transaction(conn):
        conn.execute("DELETE FROM commits WHERE name = ? AND linked = -1", (name,))
