"""
Counting a difference between two snapshots, entry by entry.

``stream`` compares two entry streams in path order; ``Tally`` counts what
it yields and keeps one row per changed path for ``snapshot_changes``.  The
scan feeds a ``Tally`` from its own comparison with the parent (no second
read of any log); ``compute`` feeds one from ``stream``: both count alike.
"""

from gridbackupd.format import logpaths
from gridbackupd.model import FILE

KEYS = ("files_added", "files_changed", "files_deleted",
        "entries_added", "entries_changed", "entries_deleted",
        "bytes_added", "bytes_deleted")


def compared(entry):
    """What a difference looks at: content and metadata, not inode numbers or ctime."""
    return (entry.kind, entry.size, entry.mtime_ns, entry.mode, entry.uid, entry.gid,
            entry.target, entry.inline, entry.blobs, entry.sha256, entry.xattrs)


def stream(before, after):
    """Yield ``(change, old, new)`` over two entry streams in path order."""
    a = next(before, None)
    b = next(after, None)
    while a is not None or b is not None:
        ka = logpaths.path_key(a.path) if a is not None else None
        kb = logpaths.path_key(b.path) if b is not None else None
        if kb is None or (ka is not None and ka < kb):
            yield "deleted", a, None
            a = next(before, None)
        elif ka is None or kb < ka:
            yield "added", None, b
            b = next(after, None)
        else:
            if compared(a) != compared(b):
                yield "changed", a, b
            a = next(before, None)
            b = next(after, None)


class Tally:
    """
    The figures of one snapshot against its parent, and its changed paths
    as rows ``(path, change, kind, size, mtime_ns)`` (the new entry's, the
    old one's for a deletion) handed to ``sink`` in batches of ``batch``
    (kept in ``rows`` when there is no sink).
    """

    def __init__(self, sink=None, batch=2000):
        self.counts = dict.fromkeys(KEYS, 0)
        self.rows = []
        self._sink = sink
        self._batch = batch

    def add(self, change, old, new):
        entry = new if new is not None else old
        counts = self.counts
        counts["entries_" + change] += 1
        if entry.kind == FILE:
            counts["files_" + change] += 1
            if change == "deleted":
                counts["bytes_deleted"] += old.size
            elif change == "added" or old.kind != FILE or old.blobs != new.blobs or old.inline != new.inline:
                counts["bytes_added"] += new.size
        self.rows.append((entry.path, change, entry.kind, entry.size, entry.mtime_ns))
        if self._sink is not None and len(self.rows) >= self._batch:
            self.flush()

    # What the scan's comparison calls (``scan.compare.Previous``).

    def added(self, new):
        self.add("added", None, new)

    def changed(self, old, new):
        """``old`` and ``new`` differ as objects; they count only if they differ as ``compared``."""
        if compared(old) != compared(new):
            self.add("changed", old, new)

    def deleted(self, old):
        self.add("deleted", old, None)

    def flush(self):
        if self._sink is not None and self.rows:
            self._sink(self.rows)
            self.rows = []
