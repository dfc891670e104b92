"""
The durable blob queue: what the scanner found and the grid does not have.

A blob is ``pending`` (to upload, with the file and offset to read it
from), ``uploaded`` (in a pack on the grid, or read for inlining, not yet
in a linked commit), ``committed`` (reachable from the root) or ``stale``
(its file changed before it could be uploaded).  Every row lives in SQLite;
the in-memory state of the uploader only says which pending blobs it is
packing now.

Order.  Each blob has a ``priority`` (see ``priority``) fixed when it is
queued, and the time it was queued.  Its effective priority grows by
``age`` points per hour it waits, so an old low-priority blob is never
starved: after a day it outranks a file saved a second ago.  The database
keeps ``rank = priority - age * queued_hours``; ordering by ``rank`` is
ordering by effective priority (the ``age * now`` term is the same for
every row), and an index on ``(state, rank DESC, hash)`` answers it.
"""

import json
import math
import time

import attr

from gridbackupd.state import blobs as blobsmod
from gridbackupd.state import db as dbmod
from gridbackupd.state import snapshots

USER_ROOTS = (b"/home", b"/root")
WEIGHTS_KEY = "queue_weights"


@attr.frozen
class Weights:
    """
    The priority's terms, all configurable in ``[upload]``:

    - ``recency``: points for a file modified just now, halved after one
      day, a third after two (``recency / (1 + age_days)``);
    - ``small``: points per decade of size below 1 MB (a 1 KiB file gets
      about 3 * small, a 1 MB one 0);
    - ``user``: points for a file under one of ``user_roots``;
    - ``age``: points gained per hour in the queue.
    """

    recency: float = 10.0
    small: float = 1.0
    user: float = 4.0
    age: float = 1.0
    user_roots: tuple = USER_ROOTS

    def to_json(self):
        return json.dumps({
            "recency": self.recency, "small": self.small, "user": self.user, "age": self.age,
            "user_roots": [r.decode("utf-8", "surrogateescape") for r in self.user_roots],
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        doc = json.loads(text)
        roots = tuple(r.encode("utf-8", "surrogateescape") for r in doc.pop("user_roots"))
        return cls(user_roots=roots, **doc)


DEFAULT_WEIGHTS = Weights()


@attr.frozen
class QueuedBlob:
    """A pending blob, where to read it, and the file it must be read from (None: unknown)."""

    hash: str
    size: int
    source_path: bytes
    source_offset: int
    source_dev: int | None = None
    source_ino: int | None = None
    source_base: int | None = None


@attr.frozen
class QueueHead:
    """One pending blob as the API shows it."""

    hash: str
    size: int
    path: bytes
    offset: int
    mtime_ns: int
    priority: float
    queued: float


def under(path, roots):
    for root in roots:
        root = root.rstrip(b"/")
        if path == root or path.startswith(root + b"/"):
            return True
    return False


def priority(mtime_ns, size, path, now=None, weights=DEFAULT_WEIGHTS, user_roots=None):
    """Higher goes first: recently modified, small, and user files."""
    now = time.time() if now is None else now
    roots = weights.user_roots if user_roots is None else user_roots
    age_days = max(0.0, now - (mtime_ns or 0) / 1e9) / 86400.0
    recency = weights.recency / (1.0 + age_days)
    smallness = weights.small * max(0.0, 6.0 - math.log10(max(size, 1)))
    user = weights.user if under(path, roots) else 0.0
    return recency + smallness + user


def rank(prio, queued, weights):
    return prio - weights.age * queued / 3600.0


PAUSED_KEY = "uploads_paused_by"


def paused_by(conn):
    """Who paused uploads ("user"), kept across restarts; None when they run."""
    return dbmod.get_meta(conn, PAUSED_KEY)


def set_paused_by(conn, who):
    """Remember that ``who`` paused uploads, or (None) that they run."""
    with dbmod.transaction(conn):
        if who is None:
            dbmod.delete_meta(conn, PAUSED_KEY)
        else:
            dbmod.set_meta(conn, PAUSED_KEY, who)


def stored_weights(conn):
    text = dbmod.get_meta(conn, WEIGHTS_KEY)
    return Weights.from_json(text) if text else DEFAULT_WEIGHTS


def set_weights(conn, weights, now=None):
    """
    Remember the configured weights (the scanner's thread queues blobs with
    them) and, if they changed, re-rank what is pending.
    """
    if stored_weights(conn) == weights and dbmod.get_meta(conn, WEIGHTS_KEY):
        return False
    now = time.time() if now is None else now

    def reprioritize(mtime_ns, size, path, queued):
        p = priority(mtime_ns, size, bytes(path or b""), now, weights)
        return p

    conn.create_function("gb_priority", 4, reprioritize, deterministic=False)
    with dbmod.transaction(conn):
        dbmod.set_meta(conn, WEIGHTS_KEY, weights.to_json())
        conn.execute(
            "UPDATE blobs SET priority = gb_priority(mtime_ns, size, source_path, queued) "
            "WHERE state = 'pending'"
        )
        conn.execute(
            "UPDATE blobs SET rank = priority - ? * queued / 3600.0 WHERE state = 'pending'",
            (weights.age,),
        )
    return True


def add_blobs(conn, snapshot_id, blobs, now=None, weights=None):
    """Queue the blobs of one scan batch, remembering which snapshot needs them."""
    now = time.time() if now is None else now
    weights = stored_weights(conn) if weights is None else weights
    rows = []
    for b in blobs:
        mtime_ns = getattr(b, "mtime_ns", None)
        p = priority(mtime_ns, b.size, b.source_path, now, weights)
        rows.append((b.hash, b.size, p, b.source_path, b.source_offset, now, mtime_ns,
                     rank(p, now, weights), weights.age, getattr(b, "source_dev", None),
                     getattr(b, "source_ino", None), getattr(b, "source_base", None)))
    conn.executemany(
        "INSERT INTO blobs (hash, size, state, priority, source_path, source_offset, queued, "
        "  mtime_ns, rank, source_dev, source_ino, source_base) "
        "VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, ?8, ?10, ?11, ?12) "
        "ON CONFLICT(hash) DO UPDATE SET "
        "  source_path = excluded.source_path, source_offset = excluded.source_offset, "
        "  source_dev = excluded.source_dev, source_ino = excluded.source_ino, "
        "  source_base = excluded.source_base, "
        "  mtime_ns = excluded.mtime_ns, "
        "  priority = max(blobs.priority, excluded.priority), "
        "  rank = max(blobs.priority, excluded.priority) - ?9 * blobs.queued / 3600.0, "
        "  state = CASE WHEN blobs.state = 'stale' THEN 'pending' ELSE blobs.state END "
        "WHERE blobs.state IN ('pending', 'stale')",
        rows,
    )
    conn.executemany(
        "INSERT OR IGNORE INTO snapshot_blobs (snapshot, hash) VALUES (?, ?)",
        [(snapshot_id, b.hash) for b in blobs],
    )


def next_batch(conn, target_size, exclude):
    """The pending blobs that go into the next pack: by effective priority, up to a size."""
    batch: list[QueuedBlob] = []
    total = 0
    rows = conn.execute(
        "SELECT hash, size, source_path, source_offset, source_dev, source_ino, source_base "
        "FROM blobs WHERE state = 'pending' ORDER BY rank DESC, hash"
    )
    for h, size, path, offset, dev, ino, base in rows:
        if h in exclude:
            continue
        if batch and total + size > target_size:
            break
        batch.append(QueuedBlob(h, size, bytes(path), offset, dev, ino, base))
        total += size
        if total >= target_size:
            break
    rows.close()
    return batch


def head(conn, limit, now=None, weights=None):
    """The next ``limit`` pending blobs in upload order, with their effective priority."""
    now = time.time() if now is None else now
    weights = stored_weights(conn) if weights is None else weights
    rows = conn.execute(
        "SELECT hash, size, source_path, source_offset, mtime_ns, rank, queued FROM blobs "
        "WHERE state = 'pending' ORDER BY rank DESC, hash LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        QueueHead(h, size, bytes(path or b""), offset, mtime_ns,
                  r + weights.age * now / 3600.0, queued)
        for h, size, path, offset, mtime_ns, r, queued in rows
    ]


def pending_totals(conn):
    row = conn.execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM blobs WHERE state = 'pending'"
    ).fetchone()
    return row[0], row[1]


def add_uncommitted(conn, snapshot_id, blobs):
    """
    Queue a scan's blobs, leaving out those already committed: an unchanged
    file's blobs usually are, and the snapshot needs nothing done for them
    (a snapshot waits only for blobs that are pending or uploaded, and
    committed is final).
    """
    with dbmod.transaction(conn):
        committed = blobsmod.committed_among(conn, {b.hash for b in blobs})
        if committed:
            blobs = [b for b in blobs if b.hash not in committed]
        if blobs:
            add_blobs(conn, snapshot_id, blobs)


def mark_changed(conn, stale):
    """
    Pending blobs whose file no longer holds them (``stale``: ``(hash,
    source path, reason)``) become ``stale``, and each snapshot still
    waiting for one gets a per-file error naming the path and why, so an
    ``incomplete`` snapshot says which files it lacks.
    """
    stale = list(stale)
    told = set()  # a file of many blobs is one error per snapshot
    with dbmod.transaction(conn):
        for h, path, why in stale:
            waiting = conn.execute(
                "SELECT sb.snapshot FROM snapshot_blobs sb JOIN snapshots s ON s.id = sb.snapshot "
                "JOIN blobs b ON b.hash = sb.hash "
                "WHERE sb.hash = ? AND s.state = 'uploading' AND b.state = 'pending'",
                (h,)).fetchall()
            shown = bytes(path).decode("utf-8", "backslashreplace") if path is not None else None
            for (snapshot_id,) in waiting:
                if (snapshot_id, shown) not in told:
                    told.add((snapshot_id, shown))
                    snapshots.add_error(conn, snapshot_id, {"path": shown, "reason": why})
        blobsmod.mark_stale(conn, [h for h, _, _ in stale])
