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


def settle_linked(conn):
    """
    Every ``uploaded`` blob in a linked commit (in one of its packs, or
    inline in its index) is ``committed``; returns how many moved.  Such a
    blob is one packed again into a pack of the same bytes after its commit.
    """
    with dbmod.transaction(conn):
        moved = conn.execute(
            "UPDATE blobs SET state = 'committed' WHERE state = 'uploaded' AND pack_id IN "
            "(SELECT p.id FROM packs p JOIN commits c ON c.name = p.commit_name WHERE c.linked = 1)"
        ).rowcount
        moved += conn.execute(
            "UPDATE blobs SET state = 'committed' WHERE state = 'uploaded' AND pack_id IS NULL "
            "AND commit_name IN (SELECT name FROM commits WHERE linked = 1)"
        ).rowcount
    return moved


def retired(conn):
    """The names of the commits a prune replaced (``linked = -1``), still linked on the grid."""
    return [r[0] for r in conn.execute("SELECT name FROM commits WHERE linked = -1")]


def drop_retired(conn, name):
    """A retired commit's row goes once it is unlinked from the grid; a live one is never dropped."""
    with dbmod.transaction(conn):
        conn.execute("DELETE FROM commits WHERE name = ? AND linked = -1", (name,))


def record_recovered(conn, name, cap, packs, blobs, inline):
    """
    A commit read back from the grid, in one transaction: it is linked; its
    packs ((name, cap, size)) belong to it; its blobs ((hash, pack name,
    offset, length, size, compression)) and inline blobs (``.hash``,
    ``.data``) are ``committed``, replacing any rows of the same keys.
    """
    with dbmod.transaction(conn):
        pack_ids = {}
        for pack_name, pack_cap, size in packs:
            conn.execute(
                "INSERT INTO packs (name, cap, size, commit_name) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET cap = excluded.cap, commit_name = excluded.commit_name",
                (pack_name, pack_cap, size, name),
            )
            pack_ids[pack_name] = conn.execute(
                "SELECT id FROM packs WHERE name = ?", (pack_name,)).fetchone()[0]
        for h, pack_name, offset, length, size, compression in blobs:
            conn.execute(
                "INSERT OR REPLACE INTO blobs (hash, size, state, pack_id, offset, length, compression, "
                "commit_name) VALUES (?, ?, 'committed', ?, ?, ?, ?, ?)",
                (h, size, pack_ids[pack_name], offset, length, compression, name),
            )
        for blob in inline:
            conn.execute(
                "INSERT OR REPLACE INTO blobs (hash, size, state, inline_data, compression, commit_name) "
                "VALUES (?, ?, 'committed', ?, 'none', ?)",
                (blob.hash, len(blob.data), blob.data, name),
            )
        conn.execute("INSERT OR REPLACE INTO commits (name, cap, linked) VALUES (?, ?, 1)", (name, cap))
