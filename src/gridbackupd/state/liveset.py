"""
The live set of a prune, and the one transaction that drops what is dead.

``live`` is a temporary table (so per connection: the prune's own, in a
worker thread) of the hashes some kept snapshot still uses.  A committed
blob not in it is dead.  The prune reads the index against it, uploads its
new commits, then ``drop_dead`` rewrites the index in one transaction: a
crash before it leaves the old index whole, a crash after it leaves the
publisher to link the new commits and unlink the retired ones
(``linked = -1``).
"""

from gridbackupd.errors import GridBackupError
from gridbackupd.state import db as dbmod


class DeadPackInUse(GridBackupError):
    """A pack about to be dropped still holds a blob that is not dead."""


def reset(conn):
    """The live set exists and is empty."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS live (hash TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("DELETE FROM live")


def add(conn, hashes):
    """The hashes are in the live set (adding one twice is a no-op)."""
    conn.executemany("INSERT OR IGNORE INTO live VALUES (?)", ((h,) for h in hashes))


def add_held(conn):
    """The blobs an unpublished snapshot holds on to (``snapshot_blobs``) are live."""
    conn.execute("INSERT OR IGNORE INTO live SELECT hash FROM snapshot_blobs")


def count(conn):
    """How many hashes are live."""
    return conn.execute("SELECT count(*) FROM live").fetchone()[0]


def linked_commits(conn):
    """The names of the commits linked under the root, in name order."""
    return [row[0] for row in conn.execute(
        "SELECT name FROM commits WHERE linked = 1 ORDER BY name").fetchall()]


def packs_of(conn, commit_name):
    """(id, name, cap, size) of the commit's packs, in name order."""
    return conn.execute(
        "SELECT id, name, cap, size FROM packs WHERE commit_name = ? ORDER BY name",
        (commit_name,)).fetchall()


def pack_liveness(conn, pack_id):
    """(stored bytes of live blobs, live blobs, dead blobs) among the pack's committed blobs."""
    return conn.execute(
        "SELECT coalesce(sum(CASE WHEN l.hash IS NOT NULL THEN b.length END), 0), "
        "count(l.hash), count(*) - count(l.hash) "
        "FROM blobs b LEFT JOIN live l ON l.hash = b.hash "
        "WHERE b.pack_id = ? AND b.state = 'committed'", (pack_id,)).fetchone()


def dead_inline(conn, commit_name):
    """How many committed inline blobs of the commit are dead."""
    return conn.execute(
        "SELECT count(*) FROM blobs b WHERE b.commit_name = ? AND b.pack_id IS NULL "
        "AND b.state = 'committed' AND b.hash NOT IN (SELECT hash FROM live)",
        (commit_name,)).fetchone()[0]


def live_in_pack(conn, pack_id):
    """(hash, offset, length, size, compression) of the pack's live committed blobs, by offset."""
    return conn.execute(
        "SELECT b.hash, b.offset, b.length, b.size, b.compression FROM blobs b "
        "JOIN live l ON l.hash = b.hash WHERE b.pack_id = ? AND b.state = 'committed' "
        "ORDER BY b.offset", (pack_id,)).fetchall()


def live_inline(conn, commit_name):
    """(hash, bytes) of the commit's live committed inline blobs."""
    return [(h, bytes(d)) for h, d in conn.execute(
        "SELECT b.hash, b.inline_data FROM blobs b JOIN live l ON l.hash = b.hash "
        "WHERE b.commit_name = ? AND b.pack_id IS NULL AND b.state = 'committed'",
        (commit_name,))]


def drop_dead(conn, commits, new_packs, new_commit):
    """
    One transaction, all or nothing: the new commit (``(name, cap)`` or
    None) and its ``new_packs`` ((name, cap, size, [(hash, offset, length,
    compression)])) with every moved blob pointing into them; for each of
    ``commits`` ((name, kept pack ids, gone pack ids, replacement (name,
    cap) or None)) its dead blobs and gone packs deleted, its kept packs
    and inline blobs moved to the replacement, and the commit itself
    retired (``linked = -1``).  New commits are unlinked (``linked = 0``)
    until the publisher links them.  Raises DeadPackInUse, changing
    nothing, if a gone pack still holds a blob.
    """
    with dbmod.transaction(conn):
        if new_commit is not None:
            conn.execute("INSERT OR REPLACE INTO commits (name, cap, linked) VALUES (?, ?, 0)",
                         new_commit)
        for name, cap, size, placed in new_packs:
            conn.execute(
                "INSERT INTO packs (name, cap, size, commit_name) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET cap = excluded.cap, "
                "commit_name = excluded.commit_name",
                (name, cap, size, new_commit[0]))
            pack_id = conn.execute("SELECT id FROM packs WHERE name = ?", (name,)).fetchone()[0]
            conn.executemany(
                "UPDATE blobs SET pack_id = ?, offset = ?, length = ?, compression = ? "
                "WHERE hash = ?",
                [(pack_id, offset, length, compression, h) for h, offset, length, compression in placed])
        for name, kept, gone, replacement in commits:
            ids = [*gone, *kept]
            if ids:
                conn.execute(
                    f"DELETE FROM blobs WHERE pack_id IN ({_marks(ids)}) AND state = 'committed' "
                    "AND hash NOT IN (SELECT hash FROM live)", ids)
            conn.execute(
                "DELETE FROM blobs WHERE commit_name = ? AND pack_id IS NULL "
                "AND state = 'committed' AND hash NOT IN (SELECT hash FROM live)",
                (name,))
            if gone:
                still = conn.execute(
                    f"SELECT count(*) FROM blobs WHERE pack_id IN ({_marks(gone)})", gone).fetchone()[0]
                if still:
                    raise DeadPackInUse(f"{still} live blobs would lose their pack; nothing pruned")
                conn.execute(f"DELETE FROM packs WHERE id IN ({_marks(gone)})", gone)
            if replacement is not None:
                conn.execute("INSERT OR REPLACE INTO commits (name, cap, linked) VALUES (?, ?, 0)",
                             replacement)
                if kept:
                    conn.execute(
                        f"UPDATE packs SET commit_name = ? WHERE id IN ({_marks(kept)})",
                        [replacement[0], *kept])
                conn.execute(
                    "UPDATE blobs SET commit_name = ? WHERE commit_name = ? AND pack_id IS NULL",
                    (replacement[0], name))
            conn.execute("UPDATE commits SET linked = -1 WHERE name = ?", (name,))


def _marks(ids):
    return ",".join("?" * len(ids))
