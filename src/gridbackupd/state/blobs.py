"""
The ``blobs`` table: where each piece of content is, on disk and on the grid.

A blob is ``pending`` (to upload, read from ``source_path`` at
``source_offset``), ``uploaded`` (in a pack that has a cap, or its bytes
kept for inlining; not yet in a linked commit), ``committed`` (in a linked
commit: reachable from the root, final) or ``stale`` (its file changed
before it could be read; the next scan queues it again).  Queueing lives in
``queue``; the moves after it are here, each one transaction (a savepoint
of the caller's, if there is one).
"""

from gridbackupd.state import db as dbmod

# Hashes per statement: SQLite's default limit of host parameters is far higher,
# but a short IN list keeps each lookup on the primary key.
_IN_CHUNK = 500


def committed_among(conn, hashes):
    """The subset of ``hashes`` that is ``committed`` (final: nothing to queue for it)."""
    hashes = list(hashes)
    committed: set[str] = set()
    for start in range(0, len(hashes), _IN_CHUNK):
        part = hashes[start:start + _IN_CHUNK]
        # By primary key: a condition on state would let SQLite walk the
        # state index over every committed blob, once per query.
        rows = conn.execute(
            f"SELECT hash, state FROM blobs WHERE hash IN ({','.join('?' * len(part))})", part)
        committed.update(h for h, state in rows if state == "committed")
    return committed


def mark_uploaded(conn, pack_id, placed):
    """
    A ``pending`` blob becomes ``uploaded`` only with its place in a pack
    that has a cap: ``placed`` is ``(hash, offset, length, compression)``.
    """
    with dbmod.transaction(conn):
        conn.executemany(
            "UPDATE blobs SET state = 'uploaded', pack_id = ?, offset = ?, length = ?, "
            "compression = ? WHERE hash = ? AND state = 'pending'",
            [(pack_id, offset, length, compression, h) for h, offset, length, compression in placed],
        )


def mark_inlined(conn, found):
    """
    A ``pending`` blob becomes ``uploaded`` with no pack only with its bytes
    (``found`` maps hash to bytes), for the next commit's index to carry.
    """
    with dbmod.transaction(conn):
        conn.executemany(
            "UPDATE blobs SET state = 'uploaded', inline_data = ?, pack_id = NULL, "
            "offset = NULL, length = ?, compression = 'none' WHERE hash = ? AND state = 'pending'",
            [(data, len(data), h) for h, data in found.items()],
        )


def mark_stale(conn, hashes):
    """A ``pending`` blob whose source changed becomes ``stale``; no other state changes."""
    with dbmod.transaction(conn):
        conn.executemany(
            "UPDATE blobs SET state = 'stale' WHERE hash = ? AND state = 'pending'",
            [(h,) for h in hashes],
        )


def mark_committed(conn, commit_name):
    """The blobs of a commit (in its packs, or inline in its index) are ``committed``."""
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE blobs SET state = 'committed' WHERE pack_id IN "
            "(SELECT id FROM packs WHERE commit_name = ?)",
            (commit_name,),
        )
        conn.execute(
            "UPDATE blobs SET state = 'committed' WHERE commit_name = ? AND pack_id IS NULL",
            (commit_name,),
        )


def uncommitted_inline(conn):
    """``[(hash, bytes)]`` of the inlined blobs that no commit carries yet, by hash."""
    return [
        (h, bytes(data)) for h, data in conn.execute(
            "SELECT hash, inline_data FROM blobs WHERE state = 'uploaded' "
            "AND inline_data IS NOT NULL AND commit_name IS NULL ORDER BY hash"
        )
    ]


def placed_in_packs(conn, pack_ids):
    """``[(hash, pack name, offset, length, size, compression)]`` of the blobs in ``pack_ids``, by hash."""
    pack_ids = list(pack_ids)
    return conn.execute(
        "SELECT b.hash, p.name, b.offset, b.length, b.size, b.compression "
        f"FROM blobs b JOIN packs p ON b.pack_id = p.id WHERE p.id IN ({','.join('?' * len(pack_ids))}) "
        "ORDER BY b.hash",
        pack_ids,
    ).fetchall()


def committed_sources_under(conn, prefix, hashes=None):
    """
    ``[(hash, source path)]`` of the ``committed`` blobs read from a path
    starting with ``prefix`` (among ``hashes``, if given).
    """
    query = ("SELECT hash, source_path FROM blobs WHERE state = 'committed' "
             "AND substr(source_path, 1, ?) = ?")
    if hashes is None:
        rows = conn.execute(query, (len(prefix), prefix)).fetchall()
    else:
        hashes = list(hashes)
        rows = conn.execute(
            query + f" AND hash IN ({','.join('?' * len(hashes))})",
            (len(prefix), prefix, *hashes)).fetchall()
    return [(h, bytes(path)) for h, path in rows]


def forget_sources(conn, hashes):
    """Blobs whose source file is gone no longer name one (their state is unchanged)."""
    with dbmod.transaction(conn):
        conn.executemany(
            "UPDATE blobs SET source_path = NULL, source_offset = NULL WHERE hash = ?",
            [(h,) for h in hashes])


# -- for restores, recovery and checks -------------------------------------------


def locate(conn, blob_hash):
    """
    Where a blob's bytes are, for a restore: (pack cap, offset, length,
    compression), the bytes themselves when the index holds the blob
    inline, or None when it is not in a pack yet (or unknown).  Any state
    counts: a blob with a pack is readable whether or not its commit is
    linked yet.
    """
    row = conn.execute(
        "SELECT p.cap, b.offset, b.length, b.compression, b.inline_data FROM blobs b "
        "LEFT JOIN packs p ON p.id = b.pack_id WHERE b.hash = ?",
        (blob_hash,),
    ).fetchone()
    if row is None:
        return None
    if row[4] is not None:
        return bytes(row[4])
    if row[0] is None:
        return None
    return tuple(row[:4])


def known(conn, blob_hash):
    """Whether the index has a row for the blob, in any state; reads only."""
    return conn.execute("SELECT 1 FROM blobs WHERE hash = ?", (blob_hash,)).fetchone() is not None


def hashes_in_pack(conn, pack_name):
    """The hashes of the blobs the index places in the pack named ``pack_name``."""
    return {row[0] for row in conn.execute(
        "SELECT b.hash FROM blobs b JOIN packs p ON p.id = b.pack_id WHERE p.name = ?",
        (pack_name,))}


def hashes_in_commit(conn, commit_name):
    """The hashes of the blobs the index places in the packs of commit ``commit_name``."""
    return {row[0] for row in conn.execute(
        "SELECT b.hash FROM blobs b JOIN packs p ON p.id = b.pack_id "
        "WHERE p.commit_name = ?", (commit_name,))}
