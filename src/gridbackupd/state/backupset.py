"""
Whether the database belongs to a backup set on the grid.

A database that records anything uploaded (a pack, an inlined blob, a
commit, a snapshot's log, a recovery from the grid) is the cache of one
backup set: without that set's root cap it must not be used to start a new
one, or new snapshots would skip blobs that live only in the old set.
"""

#: The recovery's mark in ``meta`` (restore.recover's META_KEY).
RECOVERY_KEY = "recovery"


def on_grid(conn):
    """True once the database records an object of its backup set on the grid."""
    return conn.execute(
        "SELECT 1 FROM packs WHERE cap IS NOT NULL "
        "UNION ALL SELECT 1 FROM commits "
        "UNION ALL SELECT 1 FROM snapshots WHERE log_cap IS NOT NULL "
        "UNION ALL SELECT 1 FROM blobs WHERE state IN ('uploaded', 'committed') "
        "UNION ALL SELECT 1 FROM meta WHERE key = ? "
        "LIMIT 1", (RECOVERY_KEY,)
    ).fetchone() is not None
