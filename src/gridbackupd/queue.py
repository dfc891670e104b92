"""
The durable blob queue: what the scanner found and the grid does not have.

A blob is ``pending`` (to upload, with the file and offset to read it
from), ``uploaded`` (in a pack on the grid, not yet in a linked commit),
``committed`` (reachable from the root) or ``stale`` (its file changed
before it could be uploaded).  Every row lives in SQLite; the in-memory
state of the uploader only says which pending blobs it is packing now.
"""

import math
import time

import attr

USER_ROOTS = (b"/home/", b"/root/")


@attr.frozen
class QueuedBlob:
    hash: str
    size: int
    source_path: bytes
    source_offset: int


def priority(mtime_ns, size, path, now=None, user_roots=USER_ROOTS):
    """
    Higher goes first: recently modified, small, and user files.

    Each term is a few units at most, so none of them can starve the
    others: a file saved a minute ago scores about 10 for recency, a 4 KiB
    file about 3 for size, a file under a home directory 2 more.
    """
    now = time.time() if now is None else now
    age_days = max(0.0, now - mtime_ns / 1e9) / 86400.0
    recency = 10.0 / (1.0 + age_days)
    smallness = max(0.0, 6.0 - math.log10(max(size, 1)))
    user = 2.0 if any(path.startswith(r) for r in user_roots) else 0.0
    return recency + smallness + user


def add_blobs(conn, snapshot_id, blobs, now=None):
    """Queue the blobs of one scan batch, remembering which snapshot needs them."""
    conn.executemany(
        "INSERT INTO blobs (hash, size, state, priority, source_path, source_offset) "
        "VALUES (?, ?, 'pending', ?, ?, ?) "
        "ON CONFLICT(hash) DO UPDATE SET "
        "  source_path = excluded.source_path, source_offset = excluded.source_offset, "
        "  state = CASE WHEN blobs.state = 'stale' THEN 'pending' ELSE blobs.state END "
        "WHERE blobs.state IN ('pending', 'stale')",
        [
            (b.hash, b.size, priority(b.mtime_ns, b.size, b.source_path, now),
             b.source_path, b.source_offset)
            for b in blobs
        ],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO snapshot_blobs (snapshot, hash) VALUES (?, ?)",
        [(snapshot_id, b.hash) for b in blobs],
    )


def next_batch(conn, target_size, exclude):
    """The pending blobs that go into the next pack: by priority, up to a size."""
    batch = []
    total = 0
    rows = conn.execute(
        "SELECT hash, size, source_path, source_offset FROM blobs "
        "WHERE state = 'pending' ORDER BY priority DESC, hash"
    )
    for h, size, path, offset in rows:
        if h in exclude:
            continue
        if batch and total + size > target_size:
            break
        batch.append(QueuedBlob(h, size, bytes(path), offset))
        total += size
        if total >= target_size:
            break
    rows.close()
    return batch


def pending_totals(conn):
    row = conn.execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM blobs WHERE state = 'pending'"
    ).fetchone()
    return row[0], row[1]
